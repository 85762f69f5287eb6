"""`enas-mrs`: do training-free scores predict how well a cell trains on PTB?

For M cells sampled from a search space (plus the space's published cell), the study records

* MRS (Camero, Toutouh & Alba 2018): mean and sd of the LM error over N random weight draws and
  the truncated-normal score log P(error <= t), with t the q-quantile of the whole population's
  errors (recomputed once all cells are scored, so every score uses the same t);
* hidden covariance (Serianni & Kalita, ACL 2023), the strongest published training-free score
  for RNN cells, as the competitor;
* the parameter count, a free baseline every proxy should beat;
* the validation/test perplexity after training from scratch for a fixed budget
  (``train.max_steps``) through the one loop (:func:`enas_rnn.trainrun.train_lm`; the trainings are
  jobs of the ``launcher``, so ``launcher=local`` trains cells side by side while this process scores);
* with ``search_run=<enas-search folder>``: the cell's perplexity with that run's shared weights,

and reports Spearman and Kendall correlations (with p-values) of each statistic with the trained
(and shared-weight) perplexity. The run folder::

    mrs_study.csv       one row per cell (scores, MRS samples, perplexities, seconds, genotype)
    mrs_scatter.png     each statistic against trained validation perplexity
    mrs_summary.md      setup, correlation tables, costs, per-cell table
    cells/<hash>.json   the genotypes (the record)
    runs/<hash>/        a training run folder per cell (run.json, metrics.json, tb/)

Resumable (``resume=<study folder>``): cells whose row is already in the CSV are not redone; a cell
whose training was interrupted continues from its last checkpoint.
"""

from __future__ import annotations

import csv
import ctypes
import gc
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from enas_rnn.checkpoint import LAST, checkpoint_dir, seed_everything
from enas_rnn.comparison import train_job, RunSpec
from enas_rnn.conf import MRSAppConfig
from enas_rnn.errors import ConfigError
from enas_rnn.genotype import Genotype, get_named, space_type
from enas_rnn.launch import make_executor
from enas_rnn.model import CoreKind
from enas_rnn.rules import check_values
from enas_rnn.runfolder import Claim, RunFolder, identity_of, resumed_config
from enas_rnn.runs import load_splits, resolve_device, write_json
from enas_rnn.scores.hidden_cov import hidden_cov_score
from enas_rnn.scores.lm import ScoreCache, lm_error_hi, mrs_score_genotype, scoring_slice
from enas_rnn.scores.mrs import ThresholdTracker, score_from_errors
from enas_rnn.spaces import make_space
from enas_rnn.stats import correlation_table, to_markdown
from enas_rnn.supernet import load_supernet
from enas_rnn.trainrun import TrainRunConfig
from enas_rnn.supernet import evaluate_cells

log = logging.getLogger(__name__)

CSV_NAME = "mrs_study.csv"
PLOT_NAME = "mrs_scatter.png"
SUMMARY_NAME = "mrs_summary.md"
#: What a useful statistic does against perplexity: a higher-is-better score falls as ppl grows (-),
#: a mean random error grows with it (+).
SIGN = {"mean": "+", "sd": "?", "score": "-", "hidden_cov": "-", "num_params": "-"}
TARGETS: tuple[str, ...] = ("valid_ppl", "shared_ppl")
BASE_COLUMNS: tuple[str, ...] = (
    "index", "hash", "name", "degenerate", "why", "hidden_cov", "hidden_cov_constant_units", "hidden_cov_seconds",
    "num_params", "valid_ppl", "test_ppl", "train_seconds", "shared_ppl", "genotype",
)
VARIANT_FIELDS: tuple[str, ...] = ("mean", "sd", "score", "log_p", "threshold", "seconds", "samples")
#: Published reference point: hidden covariance vs trained perplexity on NAS-Bench-NLP (Serianni & Kalita 2023).
PUBLISHED_HIDDEN_COV_TAU = 0.372


def columns(variants: Sequence[str]) -> list[str]:
    """The CSV columns: the cell, then each MRS variant's statistics."""
    return list(BASE_COLUMNS) + [f"{v}_{f}" for v in variants for f in VARIANT_FIELDS]


def stats_of(variants: Sequence[str]) -> list[str]:
    """The statistics correlated with perplexity."""
    return [f"{v}_{k}" for v in variants for k in ("mean", "sd", "score")] + ["hidden_cov", "num_params"]


def expected_sign(stat: str) -> str:
    return SIGN.get(stat.rsplit("_", 1)[-1] if stat not in SIGN else stat, "?")


# ----------------------------------------------------------------------------------------- setup


def validate_study(cfg: Any) -> None:
    """Value checks of the study app (every field's rule and the study's cross checks)."""
    check_values(cfg, MRSAppConfig)


def sample_cells(space_name: str, num_nodes: int, n: int, seed: int, include_named: bool,
                 require_memory: bool = True, template: str = "none") -> tuple[list[Genotype], list[Genotype]]:
    """(cells to train, degenerate cells): the space's published cell(s) (optional), then distinct cells drawn
    uniformly until ``n`` are not degenerate; the degenerate ones drawn on the way are kept apart."""
    space = make_space(space_name, num_nodes, template)
    gen = torch.Generator().manual_seed(int(seed))
    live: list[Genotype] = []
    dead: list[Genotype] = []
    seen: set[str] = set()
    if include_named:
        for name in space_type(space_name).named:  # the space's published cells
            g = get_named(name)
            seen.add(g.hash())
            live.append(g)
    sampled, tries = 0, 0
    while sampled < n:
        g = space.sample(gen)
        tries += 1
        if tries > 1000 * n:
            raise ConfigError(f"could not sample {n} distinct valid {space_name} cells with {num_nodes} nodes")
        if g.hash() in seen:
            continue
        seen.add(g.hash())
        if g.is_degenerate(require_memory):
            dead.append(g)
            continue
        live.append(g)
        sampled += 1
    return live, dead


def make_train_config(cfg: DictConfig, label: str = "cell") -> DictConfig:
    """A TrainRunConfig for one cell: the study's data/model/train (the genotype goes beside it, in process)."""
    run = OmegaConf.merge(
        OmegaConf.structured(TrainRunConfig), {"data": cfg.data, "model": cfg.model, "train": cfg.train}
    )
    run.model.core = CoreKind.cell
    run.cell = label
    run.seed = cfg.seed
    run.device = cfg.device
    run.experiment = cfg.get("experiment")
    return run


# ------------------------------------------------------------------------------------- training


def cell_job(cfg: DictConfig, g: Genotype, folder: Path) -> Any:
    """The training of one cell as an executor job (a diverged cell is a result: infinite perplexity)."""
    spec = RunSpec(g.hash(), g.hash(), "same", int(cfg.seed), make_train_config(cfg, g.hash()), g)
    return train_job(spec, folder)


@torch.no_grad()
def shared_weight_ppls(
    search_run: str | Path, genotypes: Sequence[Genotype], space_name: str, num_batches: int, device: torch.device
) -> dict[str, float]:
    """Perplexity of each cell with the shared weights of an enas-search run (its last checkpoint).

    Every cell is evaluated on the same first ``num_batches`` validation windows of the search
    run's corpus, as the search's derive step does. A cell with more nodes than the supernet
    holds gets NaN.
    """
    path = checkpoint_dir(Path(search_run)) / LAST
    if not path.is_file():
        raise ConfigError(f"search_run={search_run}: no checkpoint at {path} (point it at an enas-search run folder)")
    model, scfg, splits = load_supernet(search_run, str(device))
    if scfg.space.name != space_name:
        raise ConfigError(f"search_run is a {scfg.space.name!r} search but the study samples space={space_name}")
    fits = [g for g in genotypes if g.num_nodes <= scfg.space.num_nodes]
    out = {g.hash(): math.nan for g in genotypes}
    out.update({g.hash(): p for g, p in zip(fits, evaluate_cells(model, fits, splits.valid, scfg.data.bptt, num_batches))})
    return out


# ------------------------------------------------------------------------------------------ rows


def _num(v: Any) -> Any:
    """CSV cell -> float/int/str (empty -> None)."""
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except ValueError:
        return v
    return int(f) if f.is_integer() and "." not in str(v) and "e" not in str(v).lower() else f


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an existing study CSV (numbers parsed), or [] when absent."""
    if not path.is_file():
        return []
    text_keys = ("hash", "name", "genotype", "why")
    with path.open(newline="") as f:
        return [{k: (v if k in text_keys or k.endswith("_samples") else _num(v)) for k, v in raw.items()}
                for raw in csv.DictReader(f)]


def write_rows(path: Path, rows: Sequence[dict[str, Any]], variants: Sequence[str]) -> None:
    """Writes the CSV atomically (an interrupted write never leaves a truncated file)."""
    cols = columns(variants)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    os.replace(tmp, path)


def _samples(row: dict[str, Any], variant: str) -> list[float]:
    return [float(v) for v in str(row[f"{variant}_samples"]).split()]


def rescore(rows: list[dict[str, Any]], variant: str, cfg: Any, vocab_size: int) -> Optional[float]:
    """Recomputes every row's score of one MRS variant against ONE threshold: the q-quantile of the
    errors of all non-degenerate cells (quantile mode) or ``cfg.threshold``; returns the threshold used."""
    live = [r for r in rows if not r.get("degenerate")]
    if not live:
        return None
    hi = float(cfg.hi) if cfg.hi is not None else lm_error_hi(str(cfg.error), vocab_size)
    if cfg.threshold_mode == "quantile":
        tracker = ThresholdTracker(float(cfg.quantile))
        for r in live:
            tracker.add(_samples(r, variant))
        t = tracker.threshold()
    else:
        t = float(cfg.threshold)
    for r in rows:
        res = score_from_errors(_samples(r, variant), t, cfg.lo, hi, cfg.floor)
        r.update({f"{variant}_score": res.score, f"{variant}_log_p": res.log_p, f"{variant}_threshold": t})
    return t


# ------------------------------------------------------------------------------------ reporting


def correlations(rows: Sequence[dict[str, Any]], stats: Sequence[str],
                 uniform_ppl: float | None = None) -> dict[str, list[dict[str, Any]]]:
    """Spearman and Kendall (with p-values) of every statistic against each available target, over the
    trained (non-degenerate) cells.

    Both are rank statistics, so a diverged cell (infinite perplexity) enters as the worst rank instead of
    being dropped (dropping it would flatter a score that ranks diverging cells first). With ``uniform_ppl``
    (the vocabulary size) a second table ``valid_ppl_learned`` keeps only the cells that beat a uniform
    guess: whether a score also ranks the cells that learned, not only separates them from those that blew up.
    """
    trained = [r for r in rows if not r.get("degenerate")]
    worst = sys.float_info.max

    def ranked(rs: Sequence[dict[str, Any]], target: str) -> list[dict[str, Any]]:
        return [{**r, target: worst} if r.get(target) is not None and float(r[target]) == math.inf else r for r in rs]

    out: dict[str, list[dict[str, Any]]] = {}
    subsets = [(t, t, trained) for t in TARGETS]
    if uniform_ppl is not None:
        learned = [r for r in trained if r.get("valid_ppl") is not None and float(r["valid_ppl"]) < uniform_ppl]
        subsets.append(("valid_ppl_learned", "valid_ppl", learned))
    for key, target, subset in subsets:
        if sum(r.get(target) is not None and not math.isnan(float(r[target])) for r in subset) >= 3:
            table = correlation_table(ranked(subset, target), target, list(stats), methods=("spearman", "kendall"))
            for t in table:
                t["expected"] = expected_sign(t["stat"])
            out[key] = table
    return out


def degenerate_report(rows: Sequence[dict[str, Any]], variants: Sequence[str]) -> list[dict[str, Any]]:
    """How each score treats degenerate cells: the share of them among the cells it ranks in its best
    quarter, against their share of all scored cells (a score that prefers dead cells shows a higher share)."""
    scored = [r for r in rows if r.get("hidden_cov") is not None or any(r.get(f"{v}_score") is not None for v in variants)]
    if not scored or not any(r.get("degenerate") for r in scored):
        return []
    base = sum(bool(r.get("degenerate")) for r in scored) / len(scored)
    out = []
    keys = [(f"{v}_score", True) for v in variants] + [(f"{v}_mean", False) for v in variants] + [("hidden_cov", True)]
    for key, higher_better in keys:
        vals = [(float(r[key]), bool(r.get("degenerate"))) for r in scored
                if r.get(key) is not None and math.isfinite(float(r[key]))]
        if not vals:
            out.append({"statistic": key, "dead share of its best quarter": None, "dead share of all": base,
                        "defined for dead cells": 0})
            continue
        vals.sort(key=lambda t: -t[0] if higher_better else t[0])
        top = vals[: max(1, len(vals) // 4)]
        out.append({"statistic": key, "dead share of its best quarter": sum(d for _, d in top) / len(top),
                    "dead share of all": base, "defined for dead cells": sum(d for _, d in vals)})
    return out


def plot_scatter(rows: Sequence[dict[str, Any]], stats: Sequence[str], path: Path) -> Path:
    """One panel per statistic against the trained validation perplexity (log y), trained cells only."""
    trained = [r for r in rows if not r.get("degenerate")]
    ncols = min(5, len(stats))
    nrows = math.ceil(len(stats) / ncols)
    fig = Figure(figsize=(3.6 * ncols, 3.2 * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, stat in zip([a for row in axes for a in row], stats):
        pts = [(float(r[stat]), float(r["valid_ppl"]), r.get("name")) for r in trained
               if r.get(stat) is not None and r.get("valid_ppl") is not None
               and math.isfinite(float(r[stat])) and math.isfinite(float(r["valid_ppl"]))]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, alpha=0.8)
            for x, y, name in pts:  # label the published cells
                if name:
                    ax.annotate(str(name), (x, y), fontsize=7)
            ax.set_yscale("log")
        ax.set_xlabel(stat, fontsize=8)
        ax.set_ylabel("trained valid ppl", fontsize=8)
    for ax in [a for row in axes for a in row][len(stats):]:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _mean(values: Sequence[Any]) -> float:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return sum(v) / len(v) if v else math.nan


def render_markdown(cfg: Any, rows: Sequence[dict[str, Any]], tables: dict[str, list[dict[str, Any]]],
                    thresholds: dict[str, Optional[float]], dead: list[dict[str, Any]],
                    shared_seconds: Optional[float]) -> str:
    """The study summary: setup, correlation tables, degenerate cells, costs, per-cell table."""
    m, d, tr = cfg.model, cfg.data, cfg.train
    tokens = int(tr.max_steps) * int(d.batch_size) * int(d.bptt)
    trained = [r for r in rows if not r.get("degenerate")]
    lines = [
        f"# Training-free scores vs trained perplexity ({cfg.space.name} space, {d.name})",
        "",
        f"- cells: {len(trained)} trained ({cfg.cells} drawn uniformly with seed {cfg.seed} among the "
        "non-degenerate ones" + (", plus the published cell" if cfg.include_named else "")
        + f"); {len(rows) - len(trained)} degenerate cells drawn on the way, scored but not trained",
        f"- model: 1 layer, emb {m.emb_size}, hidden {m.hidden_size}, tied {m.tie_weights}; one recipe for every cell: "
        f"{tr.max_steps} SGD steps x {d.batch_size} x {d.bptt} = {tokens:,} training tokens, lr {tr.lr}",
        f"- hidden covariance: model init (seed {cfg.hidden_cov.seed}), k = {cfg.hidden_cov.k}",
        f"- scoring slice: first {cfg.score_bptt or d.bptt} + 1 validation rows x {cfg.score_batch or d.eval_batch_size} columns",
        "- MRS variants:",
    ]
    for name, v in cfg.variants.items():
        t = thresholds.get(name)
        lines.append(f"  - `{name}`: N = {v.samples} draws, weights {v.dist}" + ("" if v.dist == "init" else f"({v.scale})")
                     + f", error {v.error}, threshold {v.threshold_mode}"
                     + (f" q = {v.quantile}" if v.threshold_mode == "quantile" else f" t = {v.threshold}")
                     + (f" -> t = {t:.4g}" if t is not None else ""))
    lines += ["", "Expected sign against perplexity: `+` the statistic grows with ppl, `-` it falls (a useful "
              f"higher-is-better score is negative). Published reference: hidden covariance reaches |tau| = "
              f"{PUBLISHED_HIDDEN_COV_TAU} on NAS-Bench-NLP (Serianni & Kalita 2023).", ""]
    names = {"valid_ppl": f"trained validation perplexity ({len(trained)} trained cells; diverged = worst rank)",
             "shared_ppl": f"shared-weight perplexity ({len(trained)} trained cells)",
             "valid_ppl_learned": "trained validation perplexity, only the cells that beat a uniform guess "
                                  f"(valid ppl < vocabulary size; {max((t['n'] for t in tables.get('valid_ppl_learned', [])), default=0)} cells)"}
    for target, table in tables.items():
        lines += [f"## Against {names[target]}", "",
                  to_markdown(table, ["stat", "expected", "n", "spearman", "spearman_p", "kendall", "kendall_p"]), ""]
    if dead:
        lines += ["## Degenerate cells", "",
                  "Share of degenerate cells among the best quarter of all scored cells, by each statistic "
                  "(above the overall share: the statistic prefers dead cells).", "",
                  to_markdown(dead, list(dead[0]), ".3g"), ""]
    v0 = next(iter(cfg.variants))
    mrs_s = _mean([r.get(f"{v0}_seconds") for r in rows])
    hc_s = _mean([r.get("hidden_cov_seconds") for r in rows])
    train_s = _mean([r.get("train_seconds") for r in trained])
    lines += ["## Cost per cell (seconds, mean)", "",
              to_markdown([{f"MRS ({v0})": mrs_s, "hidden_cov": hc_s, "train": train_s,
                            "shared eval": shared_seconds if shared_seconds is not None else math.nan,
                            "train / MRS": train_s / mrs_s if mrs_s > 0 else math.nan}],
                          [f"MRS ({v0})", "hidden_cov", "train", "shared eval", "train / MRS"], ".3g"), ""]
    cols = ["hash", "name", f"{v0}_mean", f"{v0}_score", "hidden_cov", "num_params", "valid_ppl", "shared_ppl"]
    ordered = sorted(trained, key=lambda r: float(r["valid_ppl"]) if r.get("valid_ppl") is not None else math.inf)
    lines += ["## Trained cells (best perplexity first)", "", to_markdown(ordered, cols, ".4g"), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- run


def _release_memory() -> None:
    """Hands freed heap memory back to the OS between cells.

    Each training run frees its tensors, but glibc keeps the freed arenas: measured on PTB, the
    resident size of a study grew by 100-300 MB per cell (4.5 GB after a few cells) although
    nothing leaked; ``malloc_trim`` keeps it flat (~0.4 GB). No-op where glibc is absent.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


APP = "enas-mrs"
RESULT_NAME = "study.json"  # what run_study returned, for a finished study read back
#: Keys that do not change a study's results beyond the ignore list every run has (plots, checkpoints kept).
_STUDY_IGNORED = ("plot", "keep_checkpoints", "search_run")


def run_study(cfg: DictConfig, run_dir: str | Path, mode: str = "job", overrides: Sequence[str] = (),
              log_file: Optional[str] = "mrs.log", hydra_record: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Runs (or continues) the study in ``run_dir``; returns the correlation tables and file paths."""
    run_dir = Path(run_dir)
    run = RunFolder(run_dir, APP)
    if mode == "resume":
        cfg, _ = resumed_config(run, MRSAppConfig, cfg, overrides, ("device", "launcher", *_STUDY_IGNORED))
    validate_study(cfg)
    ident = {k: v for k, v in identity_of(cfg).items() if k not in _STUDY_IGNORED}
    with run.session(ident, mode, log_file=log_file, hydra_record=hydra_record) as claim:
        if claim == Claim.reuse:
            log.info("nothing to do: %s holds a finished study (read back, nothing changed)", run_dir)
            return json.loads((run_dir / RESULT_NAME).read_text())
        result = _run_study(cfg, run_dir)
        write_json(run_dir / RESULT_NAME, result)
        run.finish()
        return result


def _run_study(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    splits = load_splits(cfg.data, device)
    vocab_size = len(splits.corpus.vocab)
    data = scoring_slice(splits.valid, cfg.score_bptt or cfg.data.bptt, cfg.score_batch)
    live, dead = sample_cells(cfg.space.name, cfg.space.num_nodes, cfg.cells, cfg.seed, cfg.include_named,
                              bool(cfg.require_memory), str(cfg.space.get("template", "none")))
    cells = [(g, False) for g in live] + [(g, True) for g in (dead if cfg.degenerate_scored else [])]
    variants = list(cfg.variants)
    csv_path = run_dir / CSV_NAME
    rows = read_rows(csv_path)
    done = {r["hash"] for r in rows}
    (run_dir / "cells").mkdir(exist_ok=True)
    m = cfg.model
    kw = dict(emb_size=int(m.emb_size), hidden_size=int(m.hidden_size), tie_weights=bool(m.tie_weights),
              state_clip=m.state_clip, init_range=m.init_range)
    cache = ScoreCache()
    executor = make_executor(cfg.launcher, run_dir)
    # The trainings are jobs: with launcher=local they run side by side while this process scores.
    todo = [(i, g, d) for i, (g, d) in enumerate(cells) if g.hash() not in done]
    handles = {g.hash(): executor.submit(cell_job(cfg, g, run_dir / "runs" / g.hash()))
               for _, g, d in todo if not d}
    for i, g, degenerate in todo:
        h = g.hash()
        g.to_json(run_dir / "cells" / f"{h}.json")
        row: dict[str, Any] = {"index": i, "hash": h, "name": g.name or "", "degenerate": int(degenerate),
                               "why": g.analysis().why(bool(cfg.require_memory)),
                               "genotype": json.dumps(g.to_dict(), separators=(",", ":"))}
        for name, vcfg in cfg.variants.items():
            res = mrs_score_genotype(g, data, vocab_size, vcfg, cache=cache, **kw)
            row.update({f"{name}_mean": res.mean, f"{name}_sd": res.sd, f"{name}_seconds": res.seconds,
                        f"{name}_samples": " ".join(repr(float(e)) for e in res.samples)})
        hc = hidden_cov_score(g, data, vocab_size, cfg.hidden_cov, cache=cache, **kw)
        row.update(hidden_cov=hc.score, hidden_cov_constant_units=hc.constant_units, hidden_cov_seconds=hc.seconds)
        if not degenerate:  # a degenerate cell is scored, never trained: that is the point of recognising it
            metrics = handles[h].result()["metrics"]
            row.update(num_params=metrics.get("num_params"), valid_ppl=metrics.get("valid_ppl"),
                       test_ppl=metrics.get("test_ppl"), train_seconds=metrics.get("wall_s"))
            if not cfg.keep_checkpoints:
                shutil.rmtree(checkpoint_dir(run_dir / "runs" / h), ignore_errors=True)
        rows.append(row)
        done.add(h)
        write_rows(csv_path, rows, variants)  # after every cell: an interrupted study keeps what it finished
        log.info("cell %d/%d %s%s: %s, hidden_cov %.4g%s", len(rows), len(cells), h, " (degenerate)" if degenerate else "",
                 ", ".join(f"{v} mean {row[f'{v}_mean']:.3f}" for v in variants), hc.score,
                 "" if degenerate else f", valid ppl {float(row.get('valid_ppl') or math.nan):.1f}")
        _release_memory()
    shared_seconds = None
    if cfg.search_run:
        genotypes = [Genotype.from_dict(json.loads(r["genotype"])) for r in rows if not r.get("degenerate")]
        t0 = time.perf_counter()
        ppls = shared_weight_ppls(cfg.search_run, genotypes, cfg.space.name, cfg.shared_batches, device)
        shared_seconds = (time.perf_counter() - t0) / max(len(genotypes), 1)
        for r in rows:
            r["shared_ppl"] = ppls.get(r["hash"])
    thresholds = {v: rescore(rows, v, cfg.variants[v], vocab_size) for v in variants}
    write_rows(csv_path, rows, variants)
    stats = stats_of(variants)
    tables = correlations(rows, stats, uniform_ppl=float(vocab_size))
    dead_table = degenerate_report(rows, variants)
    png = plot_scatter(rows, stats, run_dir / PLOT_NAME) if cfg.plot else None
    md = render_markdown(cfg, rows, tables, thresholds, dead_table, shared_seconds)
    (run_dir / SUMMARY_NAME).write_text(md)
    return {"tables": tables, "csv": str(csv_path), "png": str(png) if png else None, "degenerate": dead_table,
            "summary": str(run_dir / SUMMARY_NAME), "cells": len(rows), "thresholds": thresholds}
