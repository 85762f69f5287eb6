"""A fair comparison of retrained cells with the vanilla LSTM (torch.nn.LSTM), and nn.GRU beside it.

Every run goes through :func:`enas_rnn.trainrun.train_lm`, the one training loop, with the same data,
budget (epochs / max_steps), optimiser, dropouts and seeds; only the recurrent core and its hidden
size change. Each cell is trained in two sizings:

* ``same``: the configured ``model.hidden_size`` (what a search reports);
* ``matched``: the hidden size whose *total* parameter count (embedding, cores, decoder, exactly as
  built) is closest to the baseline's, found by bisection. With ``model.tie_weights=true`` the
  embedding size follows the hidden size (tying needs emb_size == hidden_size); without tying the
  embedding size stays as configured and only cores and decoder grow or shrink. Comparing at equal
  parameters is the fair test in the NAS literature (Melis et al. 2018, "On the State of the Art of
  Evaluation in Neural Language Models"), since a cell with more weights per unit wins by size alone.

nn.LSTM is the reference. Further baselines (``baselines``: torch.nn.GRU, Cho et al. 2014) are sized like a
cell (``same`` and ``matched`` against nn.LSTM's parameter count) and carry the same Welch test.

The comparison folder::

    comparison.md / comparison.json   per run and mean +- sd over seeds, Welch t-test against nn.LSTM
    learning_curves.png               validation perplexity against training tokens, every run
    cells/<label>.json                the genotypes compared (the record)
    runs/<label>_<sizing>_seed<k>/    a training run folder each (run.json, metrics.json, checkpoints/, tb/)

The runs are independent jobs for an executor (``enas_rnn.launch``: serial, local processes, SLURM).
A run folder that holds a finished run with the same identity is reused and an unfinished one resumed,
so an interrupted comparison continues with ``resume=<its folder>``; nn.LSTM runs can live in a cache
shared by several comparisons (``baseline_cache``), and the pipeline hands in a run store its selection
stage already trained into.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
from omegaconf import DictConfig, OmegaConf

from enas_rnn.checkpoint import write_text_atomic
from enas_rnn.corpus import DataConfig
from enas_rnn.errors import ConfigError
from enas_rnn.genotype import Genotype, load_genotype
from enas_rnn.launch import Executor, Handle, Job, LauncherConfig, make_executor
from enas_rnn.model import CoreKind, ModelConfig, build_lm, count_parameters
from enas_rnn.rules import UNIT_OPEN, check_values, rule
from enas_rnn.runs import DEVICE_RULE, config_digest, strict, vocab_size_of
from enas_rnn.stats import fmt_num, mean_sd, to_markdown, welch_p
from enas_rnn.train import TrainConfig
from enas_rnn.runfolder import TERMINAL, RunFolder
from enas_rnn.trainrun import APP as TRAIN_APP
from enas_rnn.trainrun import TrainJob, TrainRunConfig, run_train_job, train_identity

log = logging.getLogger(__name__)

__all__ = [
    "BASELINE", "BASELINES", "Sizing", "CompareConfig", "CellEntry", "RunSpec", "Matching", "load_cells",
    "make_run_config", "count_lm_parameters", "match_hidden_size", "plan_runs", "summarize", "verdict",
    "verdict_group", "render_markdown", "plot_learning_curves", "run_compare", "run_name", "cell_label",
    "train_job", "submit_train", "submit_baselines", "require_cell",
]

BASELINE = "nn_lstm"  # label of the torch.nn.LSTM runs (distinct from the `lstm` genotype); the reference
# Every baseline kind `baselines=` may list, and its label; all are trained like a cell (nn.LSTM: same size only).
BASELINES = {CoreKind.lstm.value: BASELINE, CoreKind.gru.value: "nn_gru"}
_MAX_HIDDEN = 1 << 16  # a bisection bound no real model reaches


class Sizing(str, Enum):
    """How a cell is sized against the nn.LSTM baseline."""

    same = "same"  # the configured model.hidden_size
    matched = "matched"  # hidden size searched so total parameters match the baseline's


def require_cell(cfg: Any) -> None:
    """A comparison from the command line needs a cell (the pipeline hands its winner in instead)."""
    if cfg.get("cell") is None:
        raise ConfigError("cell= is required: a named cell (lstm, enas_paper) or a path to a genotype.json")


def _seeds_ok(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and len(set(v)) == len(v) and all(isinstance(s, int) for s in v)


@dataclass
class CompareConfig:
    """`enas-compare`: retrain cells and nn.LSTM under one budget, several seeds, two sizings."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # shared by every run; model.core is set per run
    train: TrainConfig = field(default_factory=TrainConfig)
    cell: Optional[str] = None  # a named genotype or a path to genotype.json (the pipeline hands its winner in)
    extra_cells: list[str] = field(default_factory=list)  # more cells compared the same way
    seeds: list[int] = rule(factory=lambda: [0, 1, 2], check=(_seeds_ok, "a non-empty list of distinct integers"))
    sizings: list[Sizing] = rule(factory=lambda: [Sizing.same, Sizing.matched],
                                 check=(lambda v: isinstance(v, list) and len(v) > 0,
                                        "a non-empty list of same, matched"))
    param_tolerance: float = rule(0.02, UNIT_OPEN)  # |params_cell / params_lstm - 1| allowed for the matched sizing
    alpha: float = rule(0.05, UNIT_OPEN)  # significance level of the Welch t-test in the verdict
    plot: bool = True  # learning_curves.png
    # Baselines trained beside the cells: lstm (torch.nn.LSTM, the reference; required) and gru (torch.nn.GRU,
    # same and parameter-matched sizes like a cell, Welch-tested against nn.LSTM).
    baselines: list[str] = rule(factory=lambda: ["lstm", "gru"], check=(
        lambda v: isinstance(v, list) and "lstm" in v and len(set(v)) == len(v) and all(b in BASELINES for b in v),
        "distinct entries of " + ", ".join(BASELINES) + ", including lstm (nn.LSTM is the reference)"))
    # A folder shared by several comparisons: nn.LSTM runs with identical settings are trained once
    # there and reused (e.g. by the pipelines of a study); None keeps them inside the comparison.
    baseline_cache: Optional[str] = None
    launcher: LauncherConfig = field(default_factory=LauncherConfig)  # where the runs train (serial, local, slurm)
    device: str = rule("auto", DEVICE_RULE)
    resume: Optional[str] = None  # a comparison folder to continue (its finished runs are kept)
    experiment: Optional[str] = None


# --------------------------------------------------------------------------------------------------------------------
# What to train
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CellEntry:
    """One cell in the comparison: its table label, how the user named it, and the genotype."""

    label: str
    spec: str
    genotype: Genotype


@dataclass
class RunSpec:
    """One training run of the comparison (or an alias of an identical one)."""

    name: str  # <label>_<sizing>_seed<k>
    model: str  # BASELINE or a cell label
    sizing: str
    seed: int
    cfg: DictConfig  # a TrainRunConfig for train_lm
    genotype: Optional[Genotype] = None
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


def cell_label(genotype: Genotype) -> str:
    """The label of a searched cell in tables and run folders: its name, else ``cell_<hash>``."""
    return genotype.name or f"cell_{genotype.hash()}"


def run_name(label: str, sizing: str, seed: int) -> str:
    """A run's folder name under runs/: ``<label>_<sizing>_seed<k>``."""
    return f"{label}_{sizing}_seed{seed}"


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


def make_run_config(cfg: Any, *, core: CoreKind, seed: int, hidden_size: int, label: str = "lstm") -> DictConfig:
    """A TrainRunConfig for one run: the comparison's data/model/train, then the run's own core, seed and hidden
    size (the embedding follows the hidden size only when weights are tied). ``label`` is recorded as ``cell``."""
    run = OmegaConf.merge(OmegaConf.structured(TrainRunConfig),
                          {"data": cfg.data, "model": cfg.model, "train": cfg.train})
    run.model.core = core
    run.model.hidden_size = hidden_size
    if run.model.tie_weights:
        run.model.emb_size = hidden_size  # tying: decoder [V, H] is the embedding [V, E]
    run.cell = label
    run.seed = seed
    run.device = cfg.device
    run.experiment = cfg.get("experiment")
    return run


def count_lm_parameters(run_cfg: DictConfig, vocab_size: int, genotype: Optional[Genotype] = None) -> int:
    """Exact trainable parameters of the model ``run_cfg`` builds (built on the meta device: no memory)."""
    try:
        with torch.device("meta"):
            model = build_lm(run_cfg.model, vocab_size, genotype)
    except (RuntimeError, NotImplementedError):  # a core that cannot live on meta: build it for real
        model = build_lm(run_cfg.model, vocab_size, genotype)
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


def _baseline_kinds(cfg: Any) -> list[str]:
    """The configured baselines as core names (lstm, gru); a config without the key means nn.LSTM alone."""
    return [str(getattr(b, "value", b)) for b in cfg.get("baselines", [CoreKind.lstm.value])]


def plan_runs(cfg: Any, cells: Sequence[CellEntry], vocab_size: int) -> tuple[list[RunSpec], list[Matching]]:
    """Every run of the comparison: nn.LSTM per seed (the reference), then every other baseline
    (``baselines``, e.g. nn.GRU) and each cell per sizing and seed."""
    hidden = int(cfg.model.hidden_size)
    sizings = [Sizing(s).value for s in cfg.sizings]
    runs: list[RunSpec] = []
    matchings: list[Matching] = []
    for seed in cfg.seeds:
        base = make_run_config(cfg, core=CoreKind.lstm, seed=seed, hidden_size=hidden)
        runs.append(RunSpec(run_name(BASELINE, "same", seed), BASELINE, "same", seed, base))
    target = count_lm_parameters(runs[0].cfg, vocab_size)
    # (label, core, genotype) of every model sized against nn.LSTM: the other baselines first, then the cells.
    others: list[tuple[str, CoreKind, Optional[Genotype]]] = [
        (BASELINES[b], CoreKind(b), None) for b in _baseline_kinds(cfg) if b != CoreKind.lstm.value]
    others += [(cell.label, CoreKind.cell, cell.genotype) for cell in cells]
    for label, core, genotype in others:
        sized = {"same": hidden}
        if "matched" in sizings:
            def counter(h: int, core: CoreKind = core, genotype: Optional[Genotype] = genotype) -> int:
                return count_lm_parameters(make_run_config(cfg, core=core, seed=0, hidden_size=h), vocab_size, genotype)

            h, tried = match_hidden_size(counter, target, start=hidden)
            m = Matching(label, target, h, tried[h], float(cfg.param_tolerance), tried)
            if not m.within_tolerance:
                log.warning("%s: the closest parameter match (hidden %d, %+.1f%%) misses the %.1f%% tolerance; "
                            "the model is too small for a finer match", label, h, 100 * m.ratio, 100 * m.tolerance)
            matchings.append(m)
            sized["matched"] = h
        for sizing in sizings:
            for seed in cfg.seeds:
                rc = make_run_config(cfg, core=core, seed=seed, hidden_size=sized[sizing], label=label)
                alias = None
                if sizing == "matched" and "same" in sizings and sized["matched"] == hidden:
                    alias = run_name(label, "same", seed)  # identical config: train once
                runs.append(RunSpec(run_name(label, sizing, seed), label, sizing, seed, rc, genotype, alias))
    return runs, matchings


def run_folder_of(spec: RunSpec, cfg: Any, folder: Path, store: Optional[Path]) -> Path:
    """Where a run trains: the baseline cache (nn.LSTM / nn.GRU, named by identity), the caller's run store,
    or the comparison's own runs/."""
    if spec.model in BASELINES.values() and cfg.get("baseline_cache"):
        digest = config_digest(train_identity(spec.cfg, None))
        return Path(cfg.baseline_cache).expanduser().resolve() / f"{spec.name}-{digest}"
    return (store if store is not None else folder / "runs") / spec.name


def _cached(spec: RunSpec, cfg: Any) -> bool:
    """Whether a run lives in the baseline cache (shared with other comparisons, which may be training it)."""
    return spec.model in BASELINES.values() and bool(cfg.get("baseline_cache"))


def train_job(spec: RunSpec, where: Path, stop_at: Optional[int] = None, wait: bool = False) -> Job:
    """The executor job that trains ``spec`` into ``where`` (``wait``: for a cached run others may be training)."""
    data = TrainJob(spec.name, OmegaConf.to_container(spec.cfg, resolve=True, enum_to_str=True), str(where),
                    None if spec.genotype is None else spec.genotype.to_dict(), stop_at, wait)
    return Job(spec.name, where, run_train_job, (data,))


def submit_train(executor: Executor, job: Job) -> Handle:
    """Submits a training job; one whose folder already holds its result (a finished run, or a pause at the
    asked step) is read back here at once instead of starting a process for it."""
    data: TrainJob = job.args[0]
    rec = RunFolder(job.folder, TRAIN_APP).record() or {}
    done = rec.get("status") in TERMINAL or (data.stop_at is not None and str(data.stop_at) in (rec.get("pauses") or {}))
    return executor.now(job) if done else executor.submit(job)


# --------------------------------------------------------------------------------------------------------------------
# Tables and the verdict
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
                                 "num_params": rs[0]["num_params"], "param_ratio": rs[0]["param_ratio"],
                                 "finite_seeds": sum(1 for r in rs if r["test_ppl"] is not None
                                                     and math.isfinite(r["test_ppl"]))}
        for key in ("valid_ppl", "test_ppl", "tokens_per_s", "wall_s"):
            entry[f"{key}_mean"], entry[f"{key}_sd"] = mean_sd([r[key] for r in rs])
        if model == BASELINE:
            entry.update(delta_test_ppl=0.0, p_value=math.nan, verdict="reference")
        else:
            test = [r["test_ppl"] for r in rs]
            p = welch_p(test, base_test)
            delta = entry["test_ppl_mean"] - base_mean
            if math.isnan(p):
                verdict_text = "untested (needs >= 2 finite seeds each)"
            elif p < alpha:
                verdict_text = "better than nn.LSTM" if delta < 0 else "worse than nn.LSTM"
            else:
                verdict_text = "no significant difference"
            entry.update(delta_test_ppl=delta, p_value=p, verdict=verdict_text)
        out.append(entry)
    return out


def verdict_group(report: Mapping[str, Any]) -> Optional[dict[str, Any]]:
    """The summary entry the verdict is about: the first cell at matched parameters (else at the same size)."""
    entries = {(s["model"], s["sizing"]): s for s in report["summary"]}
    cell = report["cell"]
    return entries.get((cell, "matched")) or entries.get((cell, "same"))


def verdict(report: Mapping[str, Any], alpha: float = 0.05) -> dict[str, Any]:
    """The first cell against nn.LSTM at matched parameters (or the same size), in words the seeds support.

    With fewer than 2 finite seeds per side there is no test: the headline says "untested" with the raw
    numbers. A difference the Welch test does not support (p >= alpha) is a tie, in the headline as in
    the table; only p < alpha says "beats" or "loses to"."""
    entries = {(s["model"], s["sizing"]): s for s in report["summary"]}
    base, mine = entries.get((BASELINE, "same")), verdict_group(report)
    if base is None or mine is None or base.get("test_ppl_mean") is None or mine.get("test_ppl_mean") is None \
            or not math.isfinite(mine["test_ppl_mean"]) or not math.isfinite(base["test_ppl_mean"]):
        return {"text": "no verdict: a run diverged or is missing", "ratio": None, "outcome": "none",
                "sizing": None if mine is None else mine["sizing"], "p_value": None}
    b, c = base["test_ppl_mean"], mine["test_ppl_mean"]
    ratio = c / b - 1.0
    p = mine.get("p_value")
    n_cell, n_base = mine.get("finite_seeds", len(mine["seeds"])), base.get("finite_seeds", len(base["seeds"]))
    what = (f"the found cell ({mine['sizing']} size, {mine['num_params']:,} parameters) vs nn.LSTM "
            f"({base['num_params']:,}): test ppl {c:.2f} vs {b:.2f} ({100 * ratio:+.1f} %")
    if p is None or (isinstance(p, float) and math.isnan(p)) or min(n_cell, n_base) < 2:
        outcome = "untested"
        text = f"untested - {what}, {min(n_cell, n_base)} finite seed(s); a test needs >= 2 per side)"
    elif p >= alpha:
        outcome = "tie"
        text = f"ties nn.LSTM (no significant difference) - {what}, Welch p = {p:.3g} over {n_cell} seeds)"
    else:
        outcome = "beats" if ratio < 0 else "loses"
        text = (f"{'beats' if ratio < 0 else 'loses to'} nn.LSTM - {what}, Welch p = {p:.3g} over {n_cell} seeds)")
    return {"text": text, "ratio": ratio, "outcome": outcome, "cell_test_ppl": c, "lstm_test_ppl": b,
            "sizing": mine["sizing"], "p_value": p, "seeds": n_cell}


def _pm(mean: float, sd: float, fmt: str = ".2f") -> str:
    if mean is None or math.isnan(mean):
        return ""
    if math.isinf(mean):
        return "diverged"
    return format(mean, fmt) if sd is None or math.isnan(sd) else f"{format(mean, fmt)} ± {format(sd, fmt)}"


def render_markdown(report: Mapping[str, Any]) -> str:
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
# The comparison
# --------------------------------------------------------------------------------------------------------------------


def plan(cfg: Any, cells: Sequence[CellEntry], folder: Path, store: Optional[Path] = None
         ) -> tuple[list[RunSpec], list[Matching], dict[str, Path]]:
    """Every run of the comparison with the folder it trains in (aliases point at their run's folder)."""
    specs, matchings = plan_runs(cfg, cells, vocab_size_of(cfg.data))
    where: dict[str, Path] = {}
    for s in specs:
        where[s.name] = where[s.alias_of] if s.alias_of else run_folder_of(s, cfg, folder, store)
    return specs, matchings, where


def submit_baselines(cfg: Any, folder: Path, executor: Executor, store: Optional[Path] = None) -> list[Handle]:
    """Starts every baseline run of a comparison (nn.LSTM, and nn.GRU at both sizes when configured) before its
    cells are known - they depend only on the config (nn.GRU is matched to nn.LSTM, not to the cell): the
    pipeline trains them while its search runs (with launcher=local, on the cores the search leaves free).
    Submitting them again later reuses them."""
    specs, _ = plan_runs(cfg, [], vocab_size_of(cfg.data))
    return [submit_train(executor, train_job(s, run_folder_of(s, cfg, folder, store), wait=_cached(s, cfg)))
            for s in specs if s.model in BASELINES.values() and s.alias_of is None]


def run_compare(cfg: Any, folder: str | Path, cells: Optional[Sequence[CellEntry]] = None,
                executor: Optional[Executor] = None, store: Optional[Path] = None,
                first: Sequence[str] = ()) -> dict[str, Any]:
    """Trains the baselines and every cell as configured; writes comparison.{md,json} and the curves.

    ``cells`` default to ``cfg.cell`` and ``cfg.extra_cells`` (loaded from names or files); the pipeline
    passes its winner in. ``executor`` runs the runs (default: serially here); ``store`` is a folder of run
    folders shared with the caller (the pipeline's selection stage trained the winner's first steps there).
    ``first`` names runs to start first (e.g. the one that continues a paused selection run: the longest).
    """
    folder = Path(folder)
    check_values(cfg, CompareConfig)
    if cells is None:
        require_cell(cfg)
        cells = load_cells([s for s in [cfg.cell, *cfg.extra_cells] if s])
    for c in cells:  # the record: which genotypes were compared
        write_text_atomic(folder / "cells" / f"{c.label}.json", c.genotype.to_json() + "\n")
    executor = executor or make_executor(cfg.get("launcher") or OmegaConf.create({"name": "serial"}), folder)
    specs, matchings, where = plan(cfg, cells, folder, store)
    target = matchings[0].target_params if matchings else None
    real = [s for s in specs if s.alias_of is None]
    order = sorted(real, key=lambda s: 0 if s.name in first else 1)
    handles = {s.name: submit_train(executor, train_job(s, where[s.name], wait=_cached(s, cfg))) for s in order}
    results = dict(zip(handles, executor.wait(list(handles.values()))))
    rows: list[dict[str, Any]] = []
    for k, spec in enumerate(specs, 1):
        if spec.alias_of is not None:
            res, status = results[spec.alias_of], "same run as " + spec.alias_of
        else:
            res = results[spec.name]
            status = res["status"]
        metrics = res["metrics"]
        log.info("[%d/%d] %s (hidden %d): %s, valid ppl %s, test ppl %s", k, len(specs), spec.name, spec.hidden_size,
                 status, fmt_num(metrics.get("valid_ppl"), ".2f"), fmt_num(metrics.get("test_ppl"), ".2f"))
        params = metrics.get("num_params")
        if target is None and spec.model == BASELINE:
            target = params
        rows.append({
            "name": spec.name, "model": spec.model, "sizing": spec.sizing, "seed": spec.seed,
            "hidden_size": spec.hidden_size, "emb_size": spec.emb_size, "num_params": params,
            "param_ratio": None, "valid_ppl": metrics["valid_ppl"], "test_ppl": metrics["test_ppl"],
            "tokens_per_s": metrics.get("tokens_per_s"), "wall_s": metrics.get("wall_s"),
            "steps": metrics.get("steps"), "status": status,
            "run_dir": os.path.relpath(where[spec.name], folder), "history": metrics.get("history", []),
        })
    for r in rows:
        if r["num_params"] is not None and target:
            r["param_ratio"] = r["num_params"] / target - 1.0
    report = {
        "cell": cells[0].label if cells else None,
        "cells": {c.label: {"spec": c.spec, "hash": c.genotype.hash(), "genotype": c.genotype.to_dict()} for c in cells},
        "baseline": BASELINE,
        "setup": _setup(cfg),
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if isinstance(cfg, DictConfig) else None,
        "matching": [m.to_dict() for m in matchings],
        "summary": summarize(rows, float(cfg.alpha)),
        "runs": rows,
    }
    report["verdict"] = verdict(report, float(cfg.alpha)) if cells else None
    # Strict JSON: nan (undefined sd or p) and inf (a diverged run) become null.
    write_text_atomic(folder / "comparison.json", json.dumps(strict(report), indent=2, allow_nan=False))
    write_text_atomic(folder / "comparison.md", render_markdown(report))
    if cfg.plot:
        plot_learning_curves(rows, folder / "learning_curves.png")
    return report


def _setup(cfg: Any) -> dict[str, Any]:
    t, m, d = cfg.train, cfg.model, cfg.data
    budget = f"{t.epochs} epoch(s)" + (f", at most {t.max_steps} steps" if t.max_steps is not None else "")
    return {
        "data": d.name, "budget": budget, "lr": t.lr, "clip": t.clip,
        "dropouts": f"{m.dropout_emb}/{m.dropout_in}/{m.dropout_out}/{m.dropout_h}",
        "num_layers": m.num_layers, "tie_weights": bool(m.tie_weights), "seeds": list(cfg.seeds),
        "device": cfg.device, "alpha": cfg.alpha, "hidden_size": m.hidden_size, "emb_size": m.emb_size,
    }
