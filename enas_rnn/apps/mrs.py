"""`enas-mrs`: do training-free scores predict how well a cell trains on PTB?

For M cells sampled from a search space (plus the space's published cell), the study records

* MRS (Camero, Toutouh & Alba 2018): mean and sd of the LM error over N random weight draws and
  the truncated-normal score log P(error <= t), with t the q-quantile of the whole population's
  errors (recomputed once all cells are scored, so every score uses the same t);
* hidden covariance (Serianni & Kalita, ACL 2023), the strongest published training-free score
  for RNN cells, as the competitor;
* the parameter count, a free baseline every proxy should beat;
* the validation/test perplexity after training from scratch for a fixed budget
  (``train.max_steps``) through the one loop (:func:`enas_rnn.apps.train.train_lm`);
* with ``search_run=<enas-search folder>``: the cell's perplexity with that run's shared weights,

and reports Spearman and Kendall correlations (with p-values) of each statistic with the trained
(and shared-weight) perplexity. The run folder::

    mrs_study.csv       one row per cell (scores, MRS samples, perplexities, seconds, genotype)
    mrs_scatter.png     each statistic against trained validation perplexity
    mrs_summary.md      setup, correlation tables, costs, per-cell table
    cells/<hash>.json   the genotypes (each training run's ``cell=`` points here)
    runs/<hash>/        an enas-train run folder per cell (metrics.json, tb/)

Resumable in the simple sense: cells whose row is already in the CSV are not redone; a cell
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
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from enas_rnn.apps.search import load_supernet
from enas_rnn.apps.train import train_lm
from enas_rnn.checkpoint import LAST, checkpoint_dir, seed_everything
from enas_rnn.conf import TrainAppConfig, check_section, validate_common
from enas_rnn.errors import ConfigError, TrainingDiverged
from enas_rnn.genotype import Genotype, get_named, space_type
from enas_rnn.model import CoreKind
from enas_rnn.runs import folder_lock, load_splits, resolve_device, write_json
from enas_rnn.scores.hidden_cov import hidden_cov_score
from enas_rnn.scores.lm import ScoreCache, lm_error_hi, mrs_score_genotype
from enas_rnn.scores.mrs import ThresholdTracker, score_from_errors
from enas_rnn.spaces import make_space
from enas_rnn.stats import correlation_table, to_markdown
from enas_rnn.supernet import evaluate_cells

log = logging.getLogger(__name__)

CSV_NAME = "mrs_study.csv"
PLOT_NAME = "mrs_scatter.png"
SUMMARY_NAME = "mrs_summary.md"
#: Statistics correlated with perplexity, and the sign a useful proxy should show against it
#: (higher score -> lower perplexity: negative; higher mean random error -> higher ppl: positive).
STATS: tuple[str, ...] = ("mrs_mean", "mrs_sd", "mrs_score", "hidden_cov", "num_params")
EXPECTED_SIGN: dict[str, str] = {
    "mrs_mean": "+", "mrs_sd": "?", "mrs_score": "-", "hidden_cov": "-", "num_params": "-",
}
TARGETS: tuple[str, ...] = ("valid_ppl", "shared_ppl")
COLUMNS: tuple[str, ...] = (
    "index", "hash", "name", "mrs_mean", "mrs_sd", "mrs_score", "mrs_log_p", "mrs_threshold",
    "mrs_seconds", "hidden_cov", "hidden_cov_constant_units", "hidden_cov_seconds", "num_params",
    "valid_ppl", "test_ppl", "train_seconds", "shared_ppl", "mrs_samples", "genotype",
)


# ----------------------------------------------------------------------------------------- setup


def validate_study(cfg: Any) -> None:
    """Value checks of the study app (types are checked by the schema)."""
    validate_common(cfg)
    check_section(cfg.space, "space", "space")
    check_section(cfg.mrs, "mrs", "mrs")
    check_section(cfg.hidden_cov, "hidden_cov", "hidden_cov")
    if cfg.cells < 1:
        raise ConfigError(f"invalid config value cells={cfg.cells!r}: valid values are integers >= 1")
    if cfg.model.num_layers != 1:
        raise ConfigError("the study scores and trains one-layer cell LMs: set model.num_layers=1")
    if cfg.train.max_steps is None:
        raise ConfigError("set train.max_steps: it is each cell's training budget")
    if cfg.shared_batches < 1:
        raise ConfigError(f"invalid config value shared_batches={cfg.shared_batches!r}: valid values are integers >= 1")


def sample_cells(space_name: str, num_nodes: int, n: int, seed: int, include_named: bool) -> list[Genotype]:
    """The space's published cell(s) (optional), then n distinct sampled cells (distinct by hash)."""
    space = make_space(space_name, num_nodes)
    gen = torch.Generator().manual_seed(int(seed))
    cells: list[Genotype] = []
    seen: set[str] = set()
    if include_named:
        for name in space_type(space_name).named:  # the space's published cells
            g = get_named(name)
            seen.add(g.hash())
            cells.append(g)
    sampled, tries = 0, 0
    while sampled < n:
        g = space.sample(gen)
        tries += 1
        if tries > 1000 * n:
            raise ConfigError(f"could not sample {n} distinct {space_name} cells with {num_nodes} nodes")
        if g.hash() in seen:
            continue
        seen.add(g.hash())
        cells.append(g)
        sampled += 1
    return cells


def scoring_slice(valid: torch.Tensor, bptt: int, batch: Optional[int]) -> torch.Tensor:
    """The fixed held-out slice the scores see: first ``bptt + 1`` rows of the first ``batch`` columns."""
    cols = valid.size(1) if batch is None else min(int(batch), valid.size(1))
    return valid[: int(bptt) + 1, :cols]  # [bptt + 1, batch]


def make_train_config(cfg: DictConfig, cell_path: Path) -> DictConfig:
    """A TrainAppConfig for one cell: the study's data/model/train with ``cell`` = its genotype file."""
    run = OmegaConf.merge(
        OmegaConf.structured(TrainAppConfig), {"data": cfg.data, "model": cfg.model, "train": cfg.train}
    )
    run.model.core = CoreKind.cell
    run.cell = str(cell_path)
    run.seed = cfg.seed
    run.device = cfg.device
    run.experiment = cfg.get("experiment")
    return run


# ------------------------------------------------------------------------------------- training


def train_cell(cfg: DictConfig, cell_path: Path, folder: Path) -> dict[str, Any]:
    """Trains one cell with :func:`enas_rnn.apps.train.train_lm` (reusing or resuming ``folder``)."""
    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text())
    run = make_train_config(cfg, cell_path)
    if (checkpoint_dir(folder) / LAST).is_file():
        run.resume = str(folder)
    try:
        metrics = train_lm(run, folder)
    except TrainingDiverged as exc:
        # A cell that diverges is a result: it gets an infinite perplexity and the study goes on.
        metrics = {"valid_ppl": math.inf, "test_ppl": math.inf, "num_params": None, "wall_s": None,
                   "error": str(exc)}
    if not cfg.keep_checkpoints:
        shutil.rmtree(checkpoint_dir(folder), ignore_errors=True)
    return metrics


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
    with path.open(newline="") as f:
        rows = []
        for raw in csv.DictReader(f):
            row = {k: (_num(v) if k not in ("hash", "name", "genotype", "mrs_samples") else v) for k, v in raw.items()}
            rows.append(row)
        return rows


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Writes the CSV atomically (an interrupted write never leaves a truncated file)."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    os.replace(tmp, path)


def _samples(row: dict[str, Any]) -> list[float]:
    return [float(v) for v in str(row["mrs_samples"]).split()]


def rescore(rows: list[dict[str, Any]], cfg: Any, vocab_size: int) -> Optional[float]:
    """Recomputes every row's MRS score against ONE threshold: the q-quantile of all cells' errors
    (quantile mode) or ``cfg.threshold``; returns the threshold used."""
    if not rows:
        return None
    hi = float(cfg.hi) if cfg.hi is not None else lm_error_hi(str(cfg.error), vocab_size)
    if cfg.threshold_mode == "quantile":
        tracker = ThresholdTracker(float(cfg.quantile))
        for r in rows:
            tracker.add(_samples(r))
        t = tracker.threshold()
    else:
        t = float(cfg.threshold)
    for r in rows:
        res = score_from_errors(_samples(r), t, cfg.lo, hi, cfg.floor)
        r.update(mrs_score=res.score, mrs_log_p=res.log_p, mrs_threshold=t)
    return t


# ------------------------------------------------------------------------------------ reporting


def correlations(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Spearman and Kendall (with p-values) of every statistic against each available target."""
    out: dict[str, list[dict[str, Any]]] = {}
    for target in TARGETS:
        if any(r.get(target) is not None and math.isfinite(float(r[target])) for r in rows):
            table = correlation_table(rows, target, STATS, methods=("spearman", "kendall"))
            for t in table:
                t["expected"] = EXPECTED_SIGN[t["stat"]]
            out[target] = table
    return out


def plot_scatter(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """One panel per statistic: the statistic against the trained validation perplexity (log y)."""
    fig = Figure(figsize=(4 * len(STATS), 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(STATS), squeeze=False)
    for ax, stat in zip(axes[0], STATS):
        pts = [(float(r[stat]), float(r["valid_ppl"])) for r in rows
               if r.get(stat) is not None and r.get("valid_ppl") is not None
               and math.isfinite(float(r[stat])) and math.isfinite(float(r["valid_ppl"]))]
        if pts:
            xs, ys = zip(*pts)
            ax.scatter(xs, ys, s=18, alpha=0.8)
            for r in rows:  # label the published cells
                if r.get("name") and r.get(stat) is not None and r.get("valid_ppl") is not None:
                    x, y = float(r[stat]), float(r["valid_ppl"])
                    if math.isfinite(x) and math.isfinite(y):
                        ax.annotate(str(r["name"]), (x, y), fontsize=8)
            ax.set_yscale("log")
        ax.set_xlabel(stat)
        ax.set_ylabel("trained valid ppl")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _mean(values: Sequence[Any]) -> float:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    return sum(v) / len(v) if v else math.nan


def render_markdown(cfg: Any, rows: Sequence[dict[str, Any]], tables: dict[str, list[dict[str, Any]]],
                    threshold: Optional[float], shared_seconds: Optional[float]) -> str:
    """The study summary: setup, correlation tables, costs, per-cell table."""
    m, d, tr, mc = cfg.model, cfg.data, cfg.train, cfg.mrs
    tokens = int(tr.max_steps) * int(d.batch_size) * int(d.bptt)
    lines = [
        f"# Training-free scores vs trained perplexity ({cfg.space.name} space, {d.name})",
        "",
        f"- cells: {len(rows)} ({cfg.cells} sampled with seed {cfg.seed}"
        + (", plus the published cell" if cfg.include_named else "") + ")",
        f"- model: 1 layer, emb {m.emb_size}, hidden {m.hidden_size}, tied {m.tie_weights}; "
        f"budget {tr.max_steps} steps x {d.batch_size} x {d.bptt} = {tokens} training tokens per cell, lr {tr.lr}",
        f"- MRS: N = {mc.samples} draws, dist {mc.dist}({mc.scale}), error {mc.error}, "
        f"threshold {mc.threshold_mode}" + (f" q = {mc.quantile}" if mc.threshold_mode == "quantile" else "")
        + (f" -> t = {threshold:.4g}" if threshold is not None else ""),
        f"- hidden covariance: model init (seed {cfg.hidden_cov.seed}), k = {cfg.hidden_cov.k}",
        f"- scoring slice: first {cfg.score_bptt or d.bptt} + 1 validation rows x "
        f"{cfg.score_batch or d.eval_batch_size} columns",
        "",
        "Expected sign against perplexity: `+` the statistic grows with ppl, `-` it falls (a useful "
        "higher-is-better score is negative).",
        "",
    ]
    names = {"valid_ppl": "trained validation perplexity", "shared_ppl": "shared-weight perplexity"}
    for target, table in tables.items():
        lines += [f"## Against {names[target]}", "",
                  to_markdown(table, ["stat", "expected", "n", "spearman", "spearman_p", "kendall", "kendall_p"]), ""]
    mrs_s = _mean([r.get("mrs_seconds") for r in rows])
    hc_s = _mean([r.get("hidden_cov_seconds") for r in rows])
    train_s = _mean([r.get("train_seconds") for r in rows])
    lines += ["## Cost per cell (seconds, mean)", "",
              to_markdown([{"MRS": mrs_s, "hidden_cov": hc_s, "train": train_s,
                            "shared eval": shared_seconds if shared_seconds is not None else math.nan,
                            "train / MRS": train_s / mrs_s if mrs_s > 0 else math.nan}],
                          ["MRS", "hidden_cov", "train", "shared eval", "train / MRS"], ".3g"), ""]
    cols = ["hash", "name", "mrs_mean", "mrs_sd", "mrs_score", "hidden_cov", "num_params", "valid_ppl", "shared_ppl"]
    ordered = sorted(rows, key=lambda r: float(r["valid_ppl"]) if r.get("valid_ppl") is not None else math.inf)
    lines += ["## Cells (best trained perplexity first)", "", to_markdown(ordered, cols, ".4g"), ""]
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


def run_study(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Runs (or continues) the study in ``run_dir``; returns the correlation tables and file paths."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    validate_study(cfg)
    with folder_lock(run_dir, "enas-mrs study"):
        _check_study_folder(cfg, run_dir)
        return _run_study(cfg, run_dir)


STUDY_CONFIG = "study_config.json"


def _check_study_folder(cfg: DictConfig, run_dir: Path) -> None:
    """A study continues only with its own settings: another study's folder is refused, never mixed."""
    mine = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for key in ("device", "plot", "search_run", "keep_checkpoints"):
        mine.pop(key, None)
    mine.get("train", {}).pop("progress", None)
    recorded = run_dir / STUDY_CONFIG
    if recorded.is_file():
        old = json.loads(recorded.read_text())
        if old != mine:
            raise ConfigError(f"{run_dir} holds a study with other settings: continue it with the same overrides, or "
                              "start this one in a new folder (drop hydra.run.dir=)")
    else:
        write_json(recorded, mine)


def _run_study(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    splits = load_splits(cfg.data, device)
    vocab_size = len(splits.corpus.vocab)
    data = scoring_slice(splits.valid, cfg.score_bptt or cfg.data.bptt, cfg.score_batch)
    cells = sample_cells(cfg.space.name, cfg.space.num_nodes, cfg.cells, cfg.seed, cfg.include_named)
    csv_path = run_dir / CSV_NAME
    rows = read_rows(csv_path)
    done = {r["hash"] for r in rows}
    (run_dir / "cells").mkdir(exist_ok=True)
    m = cfg.model
    kw = dict(emb_size=int(m.emb_size), hidden_size=int(m.hidden_size), tie_weights=bool(m.tie_weights),
              state_clip=m.state_clip, init_range=m.init_range)
    cache = ScoreCache()
    for i, g in enumerate(cells):
        h = g.hash()
        if h in done:
            continue
        cell_path = run_dir / "cells" / f"{h}.json"
        g.to_json(cell_path)
        mrs = mrs_score_genotype(g, data, vocab_size, cfg.mrs, cache=cache, **kw)
        hc = hidden_cov_score(g, data, vocab_size, cfg.hidden_cov, cache=cache, **kw)
        t0 = time.perf_counter()
        metrics = train_cell(cfg, cell_path, run_dir / "runs" / h)
        row = {
            "index": i, "hash": h, "name": g.name or "",
            "mrs_mean": mrs.mean, "mrs_sd": mrs.sd, "mrs_score": mrs.score, "mrs_log_p": mrs.log_p,
            "mrs_threshold": mrs.threshold, "mrs_seconds": mrs.seconds,
            "hidden_cov": hc.score, "hidden_cov_constant_units": hc.constant_units, "hidden_cov_seconds": hc.seconds,
            "num_params": metrics.get("num_params"), "valid_ppl": metrics.get("valid_ppl"),
            "test_ppl": metrics.get("test_ppl"), "train_seconds": metrics.get("wall_s") or time.perf_counter() - t0,
            "shared_ppl": None, "mrs_samples": " ".join(repr(float(e)) for e in mrs.samples),
            "genotype": json.dumps(g.to_dict(), separators=(",", ":")),
        }
        rows.append(row)
        done.add(h)
        write_rows(csv_path, rows)  # after every cell: an interrupted study keeps what it finished
        log.info("cell %d/%d %s: MRS mean %.3f sd %.3f, hidden_cov %.4g, valid ppl %.1f", len(rows),
                 len(cells), h, mrs.mean, mrs.sd, hc.score, float(metrics.get("valid_ppl") or math.nan))
        _release_memory()
    shared_seconds = None
    if cfg.search_run:
        genotypes = [Genotype.from_dict(json.loads(r["genotype"])) for r in rows]
        t0 = time.perf_counter()
        ppls = shared_weight_ppls(cfg.search_run, genotypes, cfg.space.name, cfg.shared_batches, device)
        shared_seconds = (time.perf_counter() - t0) / max(len(genotypes), 1)
        for r in rows:
            r["shared_ppl"] = ppls.get(r["hash"])
    threshold = rescore(rows, cfg.mrs, vocab_size)
    write_rows(csv_path, rows)
    tables = correlations(rows)
    png = plot_scatter(rows, run_dir / PLOT_NAME) if cfg.plot else None
    md = render_markdown(cfg, rows, tables, threshold, shared_seconds)
    (run_dir / SUMMARY_NAME).write_text(md)
    return {"tables": tables, "csv": str(csv_path), "png": str(png) if png else None,
            "summary": str(run_dir / SUMMARY_NAME), "cells": len(rows), "threshold": threshold}
