"""A fair comparison of retrained cells with the vanilla LSTM (torch.nn.LSTM), and nn.GRU beside it.

Every run goes through :func:`enas_rnn.apps.train.train_lm`, the one training loop, with the same data,
budget (epochs / max_steps), optimiser, dropouts and seeds; only the recurrent core and its hidden
size change. Each cell is trained in two sizings:

* ``same``: the configured ``model.hidden_size`` (what a search reports);
* ``matched``: the hidden size whose *total* parameter count (embedding, cores, decoder, exactly as
  built) is closest to the baseline's, found by bisection. With ``model.tie_weights=true`` the
  embedding size follows the hidden size (tying needs emb_size == hidden_size); without tying the
  embedding size stays as configured and only cores and decoder grow or shrink. Comparing at equal
  parameters is the fair test in the NAS literature (Melis et al. 2018, "On the State of the Art of
  Evaluation in Neural Language Models"), since a cell with more weights per unit wins by size alone.

nn.LSTM is the reference. Further baselines (``baselines``, default ``[lstm, gru]``: torch.nn.GRU, Cho
et al. 2014) are sized like a cell (``same`` and ``matched`` against nn.LSTM's parameter count) and
their rows carry the same Welch test against nn.LSTM.

The run folder::

    comparison.md / comparison.json   per run and mean +- sd over seeds, Welch t-test against nn.LSTM
    learning_curves.png               validation perplexity against training tokens, every run
    cells/<model>.json                the genotypes compared (each run's ``cell=`` points here)
    runs/<model>_<sizing>_seed<k>/    an enas-train run folder each (metrics.json, checkpoints/, tb/)

``tensorboard --logdir <run folder>/runs`` shows all runs side by side. A run folder that already
holds metrics.json is reused and one holding only checkpoints is resumed, so an interrupted
comparison continues with ``hydra.run.dir=<its folder>``; a folder trained with a different config
is refused (``run_config.json`` records what each run was trained with).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
from omegaconf import DictConfig, OmegaConf

from enas_rnn.apps.train import build_lm, train_lm
from enas_rnn.checkpoint import LAST, checkpoint_dir, write_text_atomic
from enas_rnn.conf import Sizing, TrainAppConfig, validate_common
from enas_rnn.errors import ConfigError, TrainingDiverged
from enas_rnn.genotype import Genotype, load_genotype
from enas_rnn.model import CoreKind, count_parameters
from enas_rnn.runs import config_digest, folder_lock, strict, vocab_size_of
from enas_rnn.stats import fmt_num, mean_sd, to_markdown, welch_p

log = logging.getLogger(__name__)

BASELINE = "nn_lstm"  # label of the torch.nn.LSTM runs (distinct from the `lstm` genotype); the reference
# Every baseline kind `baselines=` may list, and its label; all are trained like a cell (nn.LSTM: same size only).
BASELINES = {CoreKind.lstm.value: BASELINE, CoreKind.gru.value: "nn_gru"}
RUN_CONFIG = "run_config.json"
DIVERGED = "diverged.json"
_MAX_HIDDEN = 1 << 16  # a bisection bound no real model reaches


# --------------------------------------------------------------------------------------------------------------------
# What to train
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellEntry:
    """One cell in the comparison: its table label and the genotype."""

    label: str
    spec: str  # as the user gave it (a name or a path)
    genotype: Genotype


@dataclass
class RunSpec:
    """One training run of the comparison (or an alias of an identical one)."""

    name: str  # folder under runs/: <model>_<sizing>_seed<k>
    model: str  # BASELINE or a cell label
    sizing: str
    seed: int
    cfg: DictConfig  # a TrainAppConfig for train_lm
    alias_of: Optional[str] = None  # matched sizing that equals `same`: reuse that run

    @property
    def hidden_size(self) -> int:
        return int(self.cfg.model.hidden_size)

    @property
    def emb_size(self) -> int:
        return int(self.cfg.model.emb_size)


@dataclass
class Matching:
    """How a cell's hidden size was matched to the baseline's parameter count."""

    model: str
    target_params: int
    hidden_size: int
    num_params: int
    tolerance: float
    tried: dict[int, int] = field(default_factory=dict)  # hidden size -> params, every size evaluated

    @property
    def ratio(self) -> float:
        return self.num_params / self.target_params - 1.0

    @property
    def within_tolerance(self) -> bool:
        return abs(self.ratio) <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "target_params": self.target_params, "hidden_size": self.hidden_size,
                "num_params": self.num_params, "ratio": self.ratio, "tolerance": self.tolerance,
                "within_tolerance": self.within_tolerance}


def _label(spec: str, genotype: Genotype, taken: set[str]) -> str:
    """A short, file-name-safe label: the genotype's name, else the JSON file's stem; a clash gets the hash."""
    raw = genotype.name or (Path(spec).stem if spec.endswith(".json") or os.sep in spec else spec)
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", raw).strip("_") or "cell"
    if label in taken:
        label = f"{label}_{genotype.hash()[:8]}"
    return label


def load_cells(specs: Sequence[str]) -> list[CellEntry]:
    """Loads every genotype up front (a bad file fails before any training); duplicates are dropped."""
    cells: list[CellEntry] = []
    taken = {BASELINE}
    seen: set[str] = set()
    for spec in specs:
        genotype = load_genotype(str(spec))
        if genotype.hash() in seen:
            log.info("skipping %s: the same cell is already in the comparison", spec)
            continue
        seen.add(genotype.hash())
        label = _label(str(spec), genotype, taken)
        taken.add(label)
        cells.append(CellEntry(label, str(spec), genotype))
    return cells


def make_run_config(cfg: DictConfig, *, core: CoreKind, cell: str, seed: int, hidden_size: int) -> DictConfig:
    """A TrainAppConfig for one run: the compare config's data/model/train, then the run's own core,
    cell, seed and hidden size (the embedding follows the hidden size only when weights are tied)."""
    run = OmegaConf.merge(
        OmegaConf.structured(TrainAppConfig),
        {"data": cfg.data, "model": cfg.model, "train": cfg.train},
    )
    run.model.core = core
    run.model.hidden_size = hidden_size
    if run.model.tie_weights:
        run.model.emb_size = hidden_size  # tying: decoder [V, H] is the embedding [V, E]
    run.cell = cell
    run.seed = seed
    run.device = cfg.device
    run.experiment = cfg.get("experiment")
    return run


def count_lm_parameters(run_cfg: DictConfig, vocab_size: int) -> int:
    """Exact trainable parameters of the model ``run_cfg`` builds (built on the meta device: no memory)."""
    try:
        with torch.device("meta"):
            model, _ = build_lm(run_cfg, vocab_size)
    except (RuntimeError, NotImplementedError):  # a core that cannot live on meta: build it for real
        model, _ = build_lm(run_cfg, vocab_size)
    return count_parameters(model)


def match_hidden_size(count: Callable[[int], int], target: int, start: int = 64) -> tuple[int, dict[int, int]]:
    """The hidden size whose parameter count is closest to ``target``.

    ``count(h)`` grows strictly with h (the decoder alone adds V weights per unit), so we double an
    upper bound until it reaches the target, bisect for the first h with count(h) >= target, and
    keep the nearer of h and h - 1. Returns the size and every (size, count) evaluated.
    """
    seen: dict[int, int] = {}

    def c(h: int) -> int:
        if h not in seen:
            seen[h] = count(h)
        return seen[h]

    if c(1) >= target:
        return 1, seen
    lo, hi = 1, max(2, start)
    while c(hi) < target:
        lo, hi = hi, hi * 2
        if hi > _MAX_HIDDEN:
            raise ConfigError(f"no hidden size up to {_MAX_HIDDEN} reaches {target} parameters")
    while hi - lo > 1:  # invariant: c(lo) < target <= c(hi)
        mid = (lo + hi) // 2
        if c(mid) >= target:
            hi = mid
        else:
            lo = mid
    best = lo if target - c(lo) <= c(hi) - target else hi
    return best, seen


def plan_runs(
    cfg: DictConfig, cells: Sequence[CellEntry], cell_paths: dict[str, str], vocab_size: int
) -> tuple[list[RunSpec], list[Matching]]:
    """Every run of the comparison: nn.LSTM per seed (the reference), then every other baseline
    (``baselines``, e.g. nn.GRU) and each cell per sizing and seed."""
    hidden = int(cfg.model.hidden_size)
    sizings = [Sizing(s).value for s in cfg.sizings]
    runs: list[RunSpec] = []
    matchings: list[Matching] = []
    for seed in cfg.seeds:
        base = make_run_config(cfg, core=CoreKind.lstm, cell="lstm", seed=seed, hidden_size=hidden)
        runs.append(RunSpec(f"{BASELINE}_same_seed{seed}", BASELINE, "same", seed, base))
    target = count_lm_parameters(runs[0].cfg, vocab_size)
    # (label, core, cell) of every model sized against nn.LSTM: the other baselines first, then the cells.
    others = [(BASELINES[b], CoreKind(b), "lstm") for b in _baseline_kinds(cfg) if b != CoreKind.lstm.value]
    others += [(cell.label, CoreKind.cell, cell_paths[cell.label]) for cell in cells]
    for label, core, path in others:
        sized = {"same": hidden}
        if "matched" in sizings:
            counter = lambda h: count_lm_parameters(  # noqa: E731 - a one-line closure reads best here
                make_run_config(cfg, core=core, cell=path, seed=0, hidden_size=h), vocab_size)
            h, tried = match_hidden_size(counter, target, start=hidden)
            m = Matching(label, target, h, tried[h], float(cfg.param_tolerance), tried)
            if not m.within_tolerance:
                log.warning("%s: the closest parameter match (hidden %d, %+.1f%%) misses the %.1f%% tolerance; "
                            "the model is too small for a finer match", label, h, 100 * m.ratio,
                            100 * m.tolerance)
            matchings.append(m)
            sized["matched"] = h
        for sizing in sizings:
            for seed in cfg.seeds:
                rc = make_run_config(cfg, core=core, cell=path, seed=seed, hidden_size=sized[sizing])
                alias = None
                if sizing == "matched" and "same" in sizings and sized["matched"] == hidden:
                    alias = f"{label}_same_seed{seed}"  # identical config: train once
                runs.append(RunSpec(f"{label}_{sizing}_seed{seed}", label, sizing, seed, rc, alias))
    return runs, matchings


def _baseline_kinds(cfg: DictConfig) -> list[str]:
    """The configured baselines as core names (lstm, gru); a config without the key means nn.LSTM alone."""
    return [str(getattr(b, "value", b)) for b in cfg.get("baselines", [CoreKind.lstm.value])]


# --------------------------------------------------------------------------------------------------------------------
# Training (all through train_lm) with reuse and resume
# --------------------------------------------------------------------------------------------------------------------


def _identity(run_cfg: DictConfig) -> dict[str, Any]:
    """What makes two runs the same run (the progress bar does not)."""
    d = OmegaConf.to_container(run_cfg, resolve=True, enum_to_str=True)
    d["train"].pop("progress", None)
    d.pop("resume", None)
    return d


def run_one(spec: RunSpec, folder: Path) -> tuple[dict[str, Any], str]:
    """Trains one run into ``folder`` (or reuses / resumes it); returns its metrics and how it was obtained."""
    identity = _identity(spec.cfg)
    recorded = folder / RUN_CONFIG
    if recorded.is_file():
        old = json.loads(recorded.read_text())
        if old != identity:
            diff = sorted(_diff_keys(old, identity))
            raise ConfigError(
                f"{folder} was trained with a different config (differs in {', '.join(diff[:6])}); "
                "start the comparison in a new folder (drop hydra.run.dir=) or restore the old settings"
            )
    if (folder / "metrics.json").is_file():
        return json.loads((folder / "metrics.json").read_text()), "reused"
    if (folder / DIVERGED).is_file():
        return json.loads((folder / DIVERGED).read_text()), "diverged"
    write_text_atomic(recorded, json.dumps(identity, indent=2))
    status = "trained"
    run_cfg = spec.cfg.copy()
    if (checkpoint_dir(folder) / LAST).is_file():
        run_cfg.resume = str(folder)  # an interrupted run: continue from its last checkpoint
        status = "resumed"
    try:
        return train_lm(run_cfg, folder), status
    except TrainingDiverged as exc:
        # A cell that diverges is a result, not a crash: record it and compare the rest.
        metrics = {"valid_ppl": math.inf, "test_ppl": math.inf, "num_params": None, "tokens_per_s": None,
                   "wall_s": None, "steps": None, "history": [], "error": str(exc)}
        write_text_atomic(folder / DIVERGED, json.dumps(metrics))
        return metrics, "diverged"


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


# --------------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------------


def summarize(rows: Sequence[dict[str, Any]], alpha: float) -> list[dict[str, Any]]:
    """One entry per (model, sizing): mean and sd over seeds, and the test perplexity against nn.LSTM."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["sizing"]), []).append(r)
    base_test = [r["test_ppl"] for r in groups.get((BASELINE, "same"), [])]
    base_mean = mean_sd(base_test)[0]
    out = []
    for (model, sizing), rs in groups.items():
        entry: dict[str, Any] = {"model": model, "sizing": sizing, "seeds": [r["seed"] for r in rs],
                                 "hidden_size": rs[0]["hidden_size"], "emb_size": rs[0]["emb_size"],
                                 "num_params": rs[0]["num_params"], "param_ratio": rs[0]["param_ratio"]}
        for key in ("valid_ppl", "test_ppl", "tokens_per_s", "wall_s"):
            entry[f"{key}_mean"], entry[f"{key}_sd"] = mean_sd([r[key] for r in rs])
        if model == BASELINE:
            entry.update(delta_test_ppl=0.0, p_value=math.nan, verdict="reference")
        else:
            test = [r["test_ppl"] for r in rs]
            p = welch_p(test, base_test)
            delta = entry["test_ppl_mean"] - base_mean
            if math.isnan(p):
                verdict = "untested (needs >= 2 finite seeds each)"
            elif p < alpha:
                verdict = "better than nn.LSTM" if delta < 0 else "worse than nn.LSTM"
            else:
                verdict = "no significant difference"
            entry.update(delta_test_ppl=delta, p_value=p, verdict=verdict)
        out.append(entry)
    return out


def _pm(mean: float, sd: float, fmt: str = ".2f") -> str:
    if math.isnan(mean):
        return ""
    if math.isinf(mean):
        return "diverged"
    return format(mean, fmt) if math.isnan(sd) else f"{format(mean, fmt)} ± {format(sd, fmt)}"


def render_markdown(report: dict[str, Any]) -> str:
    """comparison.md: setup, the aggregated table, matching notes, every run."""
    setup = report["setup"]
    lines = [
        f"# {report['cell']} vs nn.LSTM",
        "",
        f"Data `{setup['data']}` · budget {setup['budget']} · SGD lr {setup['lr']} clip {setup['clip']} · "
        f"dropouts (emb/in/out/h) {setup['dropouts']} · {setup['num_layers']} layer(s) · "
        f"tied weights: {setup['tie_weights']} · seeds {setup['seeds']} · device {setup['device']}",
        "",
        "Same data, budget, optimiser, dropouts and seeds for every run. `same`: the configured hidden size; "
        "`matched`: hidden size chosen so the total parameter count is closest to nn.LSTM's"
        + (" (embedding size follows it: tied weights)." if setup["tie_weights"] else " (embedding size fixed)."),
        f"Verdict: two-sided Welch t-test on test perplexity over seeds, alpha = {setup['alpha']}.",
        "",
        "## Mean ± sd over seeds",
        "",
    ]
    summary_rows = [
        {"model": s["model"], "sizing": s["sizing"], "n": len(s["seeds"]), "hidden": s["hidden_size"],
         "params": s["num_params"], "params vs LSTM": fmt_num(100 * s["param_ratio"], "+.2f") + "%"
         if s["param_ratio"] is not None else "",
         "valid ppl": _pm(s["valid_ppl_mean"], s["valid_ppl_sd"]), "test ppl": _pm(s["test_ppl_mean"], s["test_ppl_sd"]),
         "Δ test ppl": "" if s["model"] == BASELINE else fmt_num(s["delta_test_ppl"], "+.2f"),
         "p": fmt_num(s["p_value"], ".3g"),
         "tokens/s": _pm(s["tokens_per_s_mean"], s["tokens_per_s_sd"], ".0f"),
         "wall s": _pm(s["wall_s_mean"], s["wall_s_sd"], ".1f"), "verdict": s["verdict"]}
        for s in report["summary"]
    ]
    lines.append(to_markdown(summary_rows, list(summary_rows[0])).rstrip())
    if report["matching"]:
        lines += ["", "## Parameter matching", ""]
        for m in report["matching"]:
            ok = "within" if m["within_tolerance"] else "**outside**"
            lines.append(f"- {m['model']}: hidden {m['hidden_size']} gives {m['num_params']:,} parameters vs "
                         f"nn.LSTM's {m['target_params']:,} ({100 * m['ratio']:+.2f}%, {ok} the "
                         f"{100 * m['tolerance']:.0f}% tolerance)")
    run_rows = [
        {"run": r["name"], "model": r["model"], "sizing": r["sizing"], "seed": r["seed"], "hidden": r["hidden_size"],
         "emb": r["emb_size"], "params": r["num_params"], "valid ppl": fmt_num(r["valid_ppl"], ".2f"),
         "test ppl": fmt_num(r["test_ppl"], ".2f"), "tokens/s": fmt_num(r["tokens_per_s"], ".0f"),
         "wall s": fmt_num(r["wall_s"], ".1f"), "steps": r["steps"], "status": r["status"]}
        for r in report["runs"]
    ]
    lines += ["", "## Runs", "", to_markdown(run_rows, list(run_rows[0])).rstrip(), "",
              "Learning curves: `learning_curves.png`; TensorBoard: `tensorboard --logdir runs`.", ""]
    return "\n".join(lines)


def plot_learning_curves(runs: Sequence[dict[str, Any]], path: Path) -> Optional[Path]:
    """Validation perplexity against training tokens seen, one line per run, one colour per (model, sizing)."""
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colours: dict[tuple[str, str], str] = {}
    palette = [f"C{i}" for i in range(10)]
    drawn = False
    for r in runs:
        if str(r.get("status", "")).startswith("same run as"):
            continue  # an alias: its line is already drawn
        pts = [(h["tokens"], h["valid_ppl"]) for h in r.get("history") or [] if math.isfinite(h["valid_ppl"])]
        if not pts:
            continue
        key = (r["model"], r["sizing"])
        first = key not in colours
        colours.setdefault(key, palette[len(colours) % len(palette)])
        xs, ys = zip(*pts)
        ax.plot(xs, ys, color=colours[key], marker="o", markersize=3, linewidth=1.2, alpha=0.85,
                linestyle="-" if r["model"] == BASELINE else "-." if r["model"] in BASELINES.values()
                else ("--" if r["sizing"] == "same" else ":"),
                label=f"{r['model']} ({r['sizing']}, h={r['hidden_size']})" if first else None)
        drawn = True
    if not drawn:
        return None
    ax.set_xlabel("training tokens seen")
    ax.set_ylabel("validation perplexity")
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo > 3:
        ax.set_yscale("log")  # perplexity falls over orders of magnitude early in training
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("learning curves (one line per seed)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------------------------


def validate_compare(cfg: DictConfig) -> None:
    """Compare-only values; shared ones are checked by validate_common."""
    if OmegaConf.is_missing(cfg, "cell"):
        raise ConfigError("cell= is required: a named cell (lstm, enas_paper) or a path to a genotype.json")
    if not cfg.seeds:
        raise ConfigError("invalid config value seeds=[]: valid values are a non-empty list of integers")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"invalid config value seeds={list(cfg.seeds)}: valid values are distinct integers")
    if not cfg.sizings:
        raise ConfigError("invalid config value sizings=[]: valid values are a non-empty list of same, matched")
    if not 0 < cfg.param_tolerance < 1:
        raise ConfigError(f"invalid config value param_tolerance={cfg.param_tolerance}: valid values are in (0, 1)")
    if not 0 < cfg.alpha < 1:
        raise ConfigError(f"invalid config value alpha={cfg.alpha}: valid values are in (0, 1)")
    kinds = _baseline_kinds(cfg)
    if CoreKind.lstm.value not in kinds or any(b not in BASELINES for b in kinds) or len(set(kinds)) != len(kinds):
        raise ConfigError(f"invalid config value baselines={kinds}: valid values are distinct entries of "
                          f"{', '.join(BASELINES)}, including lstm (nn.LSTM is the reference)")
    validate_common(cfg)


def run_compare(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Trains the baseline and every cell as configured; writes comparison.{md,json} and the curves."""
    run_dir = Path(run_dir)
    validate_compare(cfg)
    cells = load_cells([cfg.cell, *cfg.extra_cells])
    cell_paths = {}
    for c in cells:  # each run's cell= points at a copy inside the comparison: self-contained folders
        path = run_dir / "cells" / f"{c.label}.json"
        write_text_atomic(path, c.genotype.to_json() + "\n")
        cell_paths[c.label] = str(path.resolve())
    vocab_size = vocab_size_of(cfg.data)
    plan, matchings = plan_runs(cfg, cells, cell_paths, vocab_size)
    target = matchings[0].target_params if matchings else None

    results: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for k, spec in enumerate(plan, 1):
        if spec.alias_of is not None:
            metrics, status, folder = results[spec.alias_of], "same run as " + spec.alias_of, run_dir / "runs" / spec.alias_of
            log.info("[%d/%d] %s: the matched hidden size equals the configured one; %s is reused",
                     k, len(plan), spec.name, spec.alias_of)
        elif spec.model in BASELINES.values() and cfg.get("baseline_cache"):
            # Identical baseline runs are shared across comparisons: the folder is named after the
            # run's config, and a second process waits for the first to finish training it.
            folder = Path(cfg.baseline_cache).expanduser().resolve() / f"{spec.name}-{config_digest(_identity(spec.cfg))}"
            log.info("[%d/%d] %s (hidden %d) in the baseline cache %s", k, len(plan), spec.name, spec.hidden_size, folder)
            # A lock beside the run's folder: the training run takes the folder's own lock.
            with folder_lock(folder.parent, "baseline run", wait=True, name=f".{folder.name}.lock"):
                metrics, status = run_one(spec, folder)
            results[spec.name] = metrics
        else:
            folder = run_dir / "runs" / spec.name
            log.info("[%d/%d] %s (hidden %d)", k, len(plan), spec.name, spec.hidden_size)
            metrics, status = run_one(spec, folder)
            results[spec.name] = metrics
            log.info("[%d/%d] %s: %s, valid ppl %.2f, test ppl %.2f", k, len(plan), spec.name, status,
                     metrics["valid_ppl"], metrics["test_ppl"])
        params = metrics.get("num_params")
        if target is None and spec.model == BASELINE:
            target = params
        rows.append({
            "name": spec.name, "model": spec.model, "sizing": spec.sizing, "seed": spec.seed,
            "hidden_size": spec.hidden_size, "emb_size": spec.emb_size, "num_params": params,
            "param_ratio": None, "valid_ppl": metrics["valid_ppl"], "test_ppl": metrics["test_ppl"],
            "tokens_per_s": metrics.get("tokens_per_s"), "wall_s": metrics.get("wall_s"),
            "steps": metrics.get("steps"), "status": status,
            "run_dir": os.path.relpath(folder, run_dir), "history": metrics.get("history", []),
        })
    for r in rows:
        if r["num_params"] is not None and target:
            r["param_ratio"] = r["num_params"] / target - 1.0

    report = {
        "cell": cells[0].label,
        "cells": {c.label: {"spec": c.spec, "hash": c.genotype.hash(), "genotype": c.genotype.to_dict()} for c in cells},
        "baseline": BASELINE,
        "setup": _setup(cfg),
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        "matching": [m.to_dict() for m in matchings],
        "summary": summarize(rows, float(cfg.alpha)),
        "runs": rows,
    }
    # Strict JSON: nan (undefined sd or p) and inf (a diverged run) become null.
    write_text_atomic(run_dir / "comparison.json", json.dumps(strict(report), indent=2, allow_nan=False))
    write_text_atomic(run_dir / "comparison.md", render_markdown(report))
    if cfg.plot:
        plot_learning_curves(rows, run_dir / "learning_curves.png")
    return report


def _setup(cfg: DictConfig) -> dict[str, Any]:
    t, m, d = cfg.train, cfg.model, cfg.data
    budget = f"{t.epochs} epoch(s)" + (f", at most {t.max_steps} steps" if t.max_steps is not None else "")
    return {
        "data": d.name, "budget": budget, "lr": t.lr, "clip": t.clip,
        "dropouts": f"{m.dropout_emb}/{m.dropout_in}/{m.dropout_out}/{m.dropout_h}",
        "num_layers": m.num_layers, "tie_weights": bool(m.tie_weights), "seeds": list(cfg.seeds),
        "device": cfg.device, "alpha": cfg.alpha, "hidden_size": m.hidden_size, "emb_size": m.emb_size,
    }


__all__ = [
    "BASELINE",
    "BASELINES",
    "CellEntry",
    "RunSpec",
    "Matching",
    "load_cells",
    "make_run_config",
    "count_lm_parameters",
    "match_hidden_size",
    "plan_runs",
    "run_one",
    "summarize",
    "render_markdown",
    "plot_learning_curves",
    "validate_compare",
    "run_compare",
]
