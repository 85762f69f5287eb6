"""One table for a Hydra multirun of any app: every job's overrides and scalar metrics, and what the
sweep supports: heatmaps over two swept keys, line charts over one, mean ± sd over seeds.

A multirun folder holds one folder per job, each with ``.hydra/overrides.yaml`` (the job's
command-line overrides, written by Hydra) and, once the job finished, the app's ``metrics.json``.
:func:`collect` reads them into rows (one per job: the overrides as columns, then every scalar
metric); :func:`write_csv` writes the tidy table. What else is drawn depends on how many keys the
multirun sweeps besides ``seed`` (:func:`choose_layout`):

* two or more: :func:`heatmap_grids` averages a metric over the jobs that share an (x, y) pair
  (seeds, say), one grid per value of a ``panel`` key, and :func:`plot_heatmaps` draws the grids side
  by side on one colour scale;
* one: :func:`line_series` gives the metric's mean ± sd over the jobs (seeds) at each value of that
  key, one series per panel, and :func:`plot_lines` draws them (error bars where seeds vary);
* none (only ``seed``, or nothing): :func:`seed_table` gives mean ± sd over the jobs for every numeric
  metric.

    multirun/sweep/nth/             summary.csv, summary.md, heatmap_<metric>.png
        core=gru,model.hidden_size=8,task.seq_len=10/
            .hydra/overrides.yaml   ["core=gru", "model.hidden_size=8", "task.seq_len=10"]
            metrics.json            {"test_acc": 0.93, "num_params": 1234, ...}

``enas-summary <folder> --x task.seq_len --y model.hidden_size --metric test_acc --panel core``
(``enas_rnn/cli/summary.py``) and the sweep app's end-of-multirun callback both call
:func:`summarize_multirun`. Unset axes are chosen from the swept keys (those with more than one
value): ``core`` as the panel when it is swept with another key (swept alone it is the x axis), then
the first two others as x and y; ``seed`` is never an axis.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import yaml
from hydra.experimental.callback import Callback
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure  # no pyplot: no global state, no display needed
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from enas_rnn.checkpoint import write_text_atomic
from enas_rnn.errors import ConfigError
from enas_rnn.stats import fmt_num, mean_sd, to_markdown

log = logging.getLogger(__name__)

__all__ = ["SummaryConfig", "SummaryResult", "Layout", "find_jobs", "read_overrides", "collect", "write_csv",
           "swept_keys", "choose_axes", "choose_layout", "heatmap_grids", "plot_heatmaps", "line_series", "plot_lines",
           "seed_table", "summarize_multirun", "SummaryCallback", "sanitize_dirname", "LOWER_IS_BETTER"]

METRICS_FILE = "metrics.json"
#: Preferred metrics, in order, when none is named (the first one the jobs report is used).
DEFAULT_METRICS = ("test_acc", "test_mae", "test_ppl", "valid_ppl", "valid_acc", "valid_mae")
#: Substrings of metric names for which smaller is better (the colour map is reversed for them).
LOWER_IS_BETTER = ("ppl", "loss", "mae", "error", "wall_s", "train_s", "seconds")


@dataclass
class SummaryConfig:
    """Which heatmap to draw from a multirun (every key optional: unset ones are chosen from the sweep)."""

    x: Optional[str] = None  # an override key for the columns, e.g. task.seq_len or train.lr
    y: Optional[str] = None  # an override key for the rows, e.g. model.hidden_size or data.batch_size
    metric: Optional[str] = None  # a metrics.json key, e.g. test_acc, valid_ppl
    panel: Optional[str] = None  # an override key: one heatmap per value (e.g. core); "none": one panel


def sanitize_dirname(text: str) -> str:
    """A folder name from Hydra's ``override_dirname``: characters outside [A-Za-z0-9_.,=+-] become ``_``
    (a path value such as ``cell=/a/b.json`` would otherwise nest folders); empty means ``default``."""
    out = "".join(ch if ch.isalnum() or ch in "_.,=+-" else "_" for ch in str(text)).strip(".")
    return out[:200] or "default"


# ====================================================================================================================
# Reading a multirun
# ====================================================================================================================


def find_jobs(root: str | Path) -> list[Path]:
    """Every job folder under ``root`` (a folder holding ``.hydra/overrides.yaml``), sorted."""
    root = Path(root)
    return sorted(p.parent.parent for p in root.rglob(".hydra/overrides.yaml"))


def _value(text: str) -> Any:
    """An override's value as YAML reads it (5 -> int, 0.1 -> float, true -> bool, else the string)."""
    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(v, str):
        try:
            return float(v)  # 1e-3: a float to Hydra, a string to YAML 1.1
        except ValueError:
            return v
    return v if isinstance(v, (int, float, bool)) or v is None else text


def read_overrides(job: str | Path) -> dict[str, Any]:
    """The job's overrides as {key: value}, in command-line order (``+``/``++``/``~`` prefixes dropped)."""
    lines = yaml.safe_load((Path(job) / ".hydra" / "overrides.yaml").read_text()) or []
    out: dict[str, Any] = {}
    for line in lines:
        key, _, val = str(line).partition("=")
        out[key.lstrip("+~")] = _value(val)
    return out


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (int, float, bool, str))


def _configured(job: Path, key: str) -> Any:
    """The value a job ran with for ``key`` when it did not override it: a config group's choice
    (``.hydra/hydra.yaml``) or a config value (``.hydra/config.yaml``); None when unknown."""
    files = job / ".hydra"
    try:
        if (files / "hydra.yaml").is_file():
            choices = OmegaConf.select(OmegaConf.load(files / "hydra.yaml"), "hydra.runtime.choices", default=None)
            if choices is not None and key in choices:
                return choices[key]
        if (files / "config.yaml").is_file():
            v = OmegaConf.select(OmegaConf.load(files / "config.yaml"), key, default=None,
                                 throw_on_resolution_failure=False)
            return v if _scalar(v) else None
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException):
        pass
    return None


def collect(root: str | Path) -> list[dict[str, Any]]:
    """One row per job: ``job`` (its folder relative to ``root``), the overrides (hydra.* keys dropped),
    ``status`` (done / missing) and the scalar entries of metrics.json (nested objects flattened two levels
    deep as ``a.b.c``; lists dropped).

    A key that some jobs override and others do not (two sweeps in one folder, say) is filled in for
    the others from the config they ran with, so every row has every override column."""
    root = Path(root)
    jobs = find_jobs(root)
    overrides = [{k: v for k, v in read_overrides(job).items() if not k.startswith("hydra.")} for job in jobs]
    keys: list[str] = []
    for o in overrides:
        keys += [k for k in o if k not in keys]
    rows = []
    for job, given in zip(jobs, overrides):
        row: dict[str, Any] = {"job": os.path.relpath(job, root)}
        for k in keys:
            row[k] = given[k] if k in given else _configured(job, k)
        path = job / METRICS_FILE
        metrics = None
        if path.is_file():
            try:
                metrics = json.loads(path.read_text())
            except ValueError as exc:
                log.warning("%s is unreadable (%s); its job is listed as missing", path, exc)
        row["status"] = "done" if isinstance(metrics, dict) else "missing"
        for k, v in _flat(metrics or {}):
            if _scalar(v) and k not in row:
                row[k] = v
        rows.append(row)
    return rows


def _flat(d: dict[str, Any], prefix: str = "", depth: int = 2) -> list[tuple[str, Any]]:
    """The entries of a metrics.json with nested objects flattened ``depth`` levels deep (``verdict.ratio``,
    ``fidelity.supernet.tau``: an enas-pipeline's numbers sit one or two levels down)."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict) and depth > 0:
            out += _flat(v, f"{prefix}{k}.", depth - 1)
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The tidy table: one row per job, the union of the columns (blank where a job lacks one)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(rows), restval="", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return write_text_atomic(path, buf.getvalue())


# ====================================================================================================================
# Axes and grids
# ====================================================================================================================


def _override_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Keys that came from overrides (every column between ``job`` and ``status``)."""
    keys: list[str] = []
    for r in rows:
        names = list(r)
        for k in names[1 : names.index("status")]:
            if k not in keys:
                keys.append(k)
    return keys


def swept_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Override keys that take more than one value across the jobs (the sweep's axes)."""
    return [k for k in _override_keys(rows) if len({repr(r.get(k)) for r in rows}) > 1]


@dataclass(frozen=True)
class Layout:
    """What a multirun's summary draws: ``kind`` is ``heatmap`` (x and y), ``lines`` (x only) or
    ``seeds`` (no axis: mean ± sd over the jobs); ``metric`` is the one charted."""

    kind: str
    metric: Optional[str]
    x: Optional[str] = None
    y: Optional[str] = None
    panel: Optional[str] = None


def _default_metric(rows: Sequence[dict[str, Any]]) -> Optional[str]:
    present = {k for r in rows for k, v in r.items() if _number(v)}
    return next((m for m in DEFAULT_METRICS if m in present), None)


def choose_layout(rows: Sequence[dict[str, Any]], cfg: SummaryConfig) -> Layout:
    """The given axes, the rest from the sweep (see the module doc); ConfigError names a key that is not a
    column, or a chart without any metric to chart."""
    swept = swept_keys(rows)
    free = [k for k in swept if k not in (cfg.panel, cfg.x, cfg.y, "seed")]
    panel = cfg.panel
    if panel is None:
        # core as the panel only when something else is swept: swept alone it is the axis to read
        panel = "core" if "core" in free and (len(free) > 1 or cfg.x or cfg.y) else None
    elif panel in ("none", ""):
        panel = None
    free = [k for k in free if k != panel]
    x = cfg.x or (free.pop(0) if free else None)
    y = cfg.y or (free.pop(0) if free else None)
    if x is None and y is not None:
        x, y = y, None  # one axis given as --y: it is the line chart's x
    metric = cfg.metric or _default_metric(rows)
    keys = set(_columns(rows))
    for what, key in (("x", x), ("y", y), ("panel", panel), ("metric", metric)):
        if key is not None and key not in keys:
            raise ConfigError(f"{what}={key!r} is not a column of this multirun; columns are "
                              f"{', '.join(sorted(keys - {'job', 'status'}))}")
    kind = "heatmap" if y is not None else "lines" if x is not None else "seeds"
    if metric is None and kind != "seeds":
        raise ConfigError("no metric to plot: pass --metric <a key of the jobs' metrics.json>")
    return Layout(kind, metric, x, y, panel)


def choose_axes(rows: Sequence[dict[str, Any]], cfg: SummaryConfig) -> tuple[str, str, str, Optional[str]]:
    """(x, y, metric, panel) of a heatmap; ConfigError when the multirun does not sweep two keys."""
    layout = choose_layout(rows, cfg)
    if layout.kind != "heatmap":
        raise ConfigError(f"a heatmap needs two swept keys (x and y); this multirun sweeps "
                          f"{swept_keys(rows) or 'nothing'}: pass --x and --y (override keys) or sweep two keys")
    assert layout.x is not None and layout.y is not None and layout.metric is not None
    return layout.x, layout.y, layout.metric, layout.panel


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _sort_values(values: set[Any]) -> list[Any]:
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(nums) == len(values):
        return sorted(nums)
    return sorted(values, key=str)


@dataclass
class Grid:
    """A metric averaged per (y, x) cell for one panel; ``count`` jobs per cell (NaN where none finished)."""

    panel: Any
    xs: list[Any]
    ys: list[Any]
    mean: np.ndarray  # [len(ys), len(xs)]
    count: np.ndarray


def heatmap_grids(rows: Sequence[dict[str, Any]], x: str, y: str, metric: str, panel: Optional[str]) -> list[Grid]:
    """One grid per panel value, on shared x and y values; cells average every finished job (seeds and any
    other key not on an axis) whose metric is a finite number."""
    xs = _sort_values({r.get(x) for r in rows})
    ys = _sort_values({r.get(y) for r in rows})
    panels = _sort_values({r.get(panel) for r in rows}) if panel else [None]
    grids = []
    for p in panels:
        acc: dict[tuple[int, int], list[float]] = {}
        for r in rows:
            if panel and r.get(panel) != p:
                continue
            v = r.get(metric)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            acc.setdefault((ys.index(r.get(y)), xs.index(r.get(x))), []).append(float(v))
        mean = np.full((len(ys), len(xs)), np.nan)
        count = np.zeros((len(ys), len(xs)), dtype=int)
        for (i, j), vals in acc.items():
            mean[i, j], count[i, j] = float(np.mean(vals)), len(vals)
        grids.append(Grid(p, xs, ys, mean, count))
    return grids


def lower_is_better(metric: str) -> bool:
    return any(s in metric for s in LOWER_IS_BETTER)


def _save(fig: Figure, path: str | Path) -> Path:
    """Writes a figure through a temporary sibling and a rename (never half a PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def plot_heatmaps(grids: Sequence[Grid], x: str, y: str, metric: str, panel: Optional[str], path: str | Path,
                  title: Optional[str] = None) -> Path:
    """Grids side by side (at most 4 a row) on one colour scale, each cell annotated with its value."""
    n = len(grids)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    w = max(len(grids[0].xs), 2) * 0.75 + 1.2
    h = max(len(grids[0].ys), 2) * 0.55 + 1.2
    fig = Figure(figsize=(w * ncols + 1.2, h * nrows + (0.5 if title else 0.2)), layout="constrained")
    FigureCanvasAgg(fig)
    finite = np.concatenate([g.mean[np.isfinite(g.mean)] for g in grids]) if grids else np.array([])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if "acc" in metric:
        vmin, vmax = 0.0, 1.0  # accuracies on one absolute scale, comparable across figures
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    cmap = "viridis_r" if lower_is_better(metric) else "viridis"
    image = None
    for k, g in enumerate(grids):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        image = ax.imshow(np.ma.masked_invalid(g.mean), origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(g.xs)), [str(v) for v in g.xs])
        ax.set_yticks(range(len(g.ys)), [str(v) for v in g.ys])
        ax.set_xlabel(x)
        if k % ncols == 0:
            ax.set_ylabel(y)
        ax.set_title(f"{panel}={g.panel}" if panel else metric, fontsize=10)
        for i in range(len(g.ys)):
            for j in range(len(g.xs)):
                v = g.mean[i, j]
                if math.isfinite(v):
                    frac = (v - vmin) / (vmax - vmin)
                    dark = frac < 0.5 if cmap == "viridis" else frac > 0.5
                    ax.text(j, i, _fmt(v, metric), ha="center", va="center", fontsize=7, color="white" if dark else "black")
    if image is not None:
        fig.colorbar(image, ax=fig.axes, label=metric, shrink=0.9)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _fmt(v: float, metric: str) -> str:
    """Accuracies with two decimals, anything else with three significant digits (an MAE of 0.004)."""
    return f"{v:.2f}" if "acc" in metric else f"{v:.3g}"


def grids_markdown(grids: Sequence[Grid], x: str, y: str, metric: str, panel: Optional[str]) -> str:
    """The grids as markdown tables (rows y, columns x), one per panel."""
    parts = []
    for g in grids:
        head = f"### {panel} = {g.panel}\n\n" if panel else ""
        rows = []
        for i, yv in enumerate(g.ys):
            row = {f"{y} \\ {x}": str(yv)}
            for j, xv in enumerate(g.xs):
                v = g.mean[i, j]
                row[str(xv)] = _fmt(v, metric) + (f" (n={g.count[i, j]})" if g.count[i, j] > 1 else "") if math.isfinite(v) else ""
            rows.append(row)
        parts.append(head + f"{metric}, mean over jobs per cell:\n\n" + to_markdown(rows, list(rows[0])).rstrip())
    return "\n\n".join(parts)


# ====================================================================================================================
# One swept key: lines; none: mean ± sd over seeds
# ====================================================================================================================


@dataclass
class Series:
    """A metric's mean ± sd (sample sd, n - 1) over the jobs at each x value, for one panel; ``count``
    jobs each (0 where none finished with a finite value: mean and sd NaN there)."""

    panel: Any
    xs: list[Any]
    mean: np.ndarray  # [len(xs)]
    sd: np.ndarray  # NaN where fewer than two jobs
    count: np.ndarray


def _finite_values(rows: Sequence[dict[str, Any]], metric: str) -> list[float]:
    return [float(r[metric]) for r in rows if _number(r.get(metric)) and math.isfinite(r[metric])]


def line_series(rows: Sequence[dict[str, Any]], x: str, metric: str, panel: Optional[str]) -> list[Series]:
    """One series per panel value on shared x values; each point is the mean ± sd of every finished job
    (the seeds, and any key not on an axis) whose metric is a finite number."""
    xs = _sort_values({r.get(x) for r in rows})
    panels = _sort_values({r.get(panel) for r in rows}) if panel else [None]
    out = []
    for p in panels:
        mine = [r for r in rows if not panel or r.get(panel) == p]
        mean, sd = np.full(len(xs), np.nan), np.full(len(xs), np.nan)
        count = np.zeros(len(xs), dtype=int)
        for j, xv in enumerate(xs):
            vals = _finite_values([r for r in mine if r.get(x) == xv], metric)
            if vals:
                mean[j], sd[j] = mean_sd(vals)
                count[j] = len(vals)
        out.append(Series(p, xs, mean, sd, count))
    return out


def _log_axis(xs: Sequence[Any]) -> bool:
    """A log x axis for positive numbers spanning 20x or more (learning rates, data-set sizes)."""
    nums = [float(v) for v in xs if _number(v)]
    return len(nums) == len(xs) and len(nums) > 1 and min(nums) > 0 and max(nums) / min(nums) >= 20


def plot_lines(series: Sequence[Series], x: str, metric: str, panel: Optional[str], path: str | Path,
               title: Optional[str] = None) -> Path:
    """One panel per series (at most 4 a row) on one y scale: the mean at each x, with ± sd error bars
    where two or more jobs (seeds) share the point; categorical x values (cores) are evenly spaced."""
    n = len(series)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.6 * ncols + 0.6, 2.9 * nrows + (0.5 if title else 0.2)), layout="constrained")
    FigureCanvasAgg(fig)
    numeric = all(_number(v) for v in series[0].xs)
    log_x = numeric and _log_axis(series[0].xs)
    first = None
    for k, ser in enumerate(series):
        ax = fig.add_subplot(nrows, ncols, k + 1, sharey=first)
        first = first or ax
        pos = [float(v) for v in ser.xs] if numeric else list(range(len(ser.xs)))
        seeds = np.where(ser.count > 1, ser.sd, np.nan)
        ax.errorbar(pos, ser.mean, yerr=np.nan_to_num(seeds), fmt="o-", capsize=3, ms=4, lw=1.2)
        if log_x:
            ax.set_xscale("log")
        if not numeric or len(ser.xs) <= 8:
            ax.set_xticks(pos, [str(v) for v in ser.xs])
        ax.set_xlabel(x)
        if k % ncols == 0:
            ax.set_ylabel(metric)
        if "acc" in metric:
            ax.set_ylim(0, 1.02)  # accuracies on one absolute scale, as in the heatmaps
        ax.grid(alpha=0.3)
        ax.set_title(f"{panel}={ser.panel}" if panel else metric, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def lines_markdown(series: Sequence[Series], x: str, metric: str, panel: Optional[str]) -> str:
    """The series as markdown tables: one row per x value, mean ± sd and the number of jobs."""
    parts = []
    for ser in series:
        head = f"### {panel} = {ser.panel}\n\n" if panel else ""
        rows = [{x: str(xv), metric: _pm(ser.mean[j], ser.sd[j], metric), "n": int(ser.count[j])}
                for j, xv in enumerate(ser.xs)]
        parts.append(head + f"{metric}, mean ± sd over the jobs (seeds) at each {x}:\n\n"
                     + to_markdown(rows, [x, metric, "n"]).rstrip())
    return "\n\n".join(parts)


def _pm(mean: float, sd: float, metric: str) -> str:
    if not math.isfinite(mean):
        return fmt_num(mean, ".3g")
    return _fmt(mean, metric) + (f" ± {_fmt(sd, metric)}" if math.isfinite(sd) else "")


def seed_table(rows: Sequence[dict[str, Any]], panel: Optional[str] = None) -> list[dict[str, Any]]:
    """Mean ± sd over the finished jobs of every numeric metric (override columns excluded), one row per
    (panel value, metric): ``metric``, ``mean``, ``sd`` (n - 1), ``n``, ``min``, ``max``; an infinite value
    (a diverged job) makes the mean infinite, as in the comparison tables."""
    overrides = set(_override_keys(rows))
    done = [r for r in rows if r.get("status") == "done"]
    metrics: list[str] = []
    for r in done:
        metrics += [k for k, v in r.items() if k not in overrides and k not in metrics and _number(v)]
    out = []
    for p in (_sort_values({r.get(panel) for r in done}) if panel else [None]):
        mine = [r for r in done if not panel or r.get(panel) == p]
        for m in metrics:
            vals = [float(r[m]) for r in mine if _number(r.get(m)) and not math.isnan(r[m])]
            if not vals:
                continue
            mean, sd = mean_sd(vals)
            entry = {panel: p} if panel else {}
            entry.update(metric=m, mean=mean, sd=sd, n=len(vals), min=min(vals), max=max(vals))
            out.append(entry)
    return out


def seeds_markdown(table: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], panel: Optional[str]) -> str:
    """The seed table as markdown, with what the jobs differ in (their seeds)."""
    done = [r for r in rows if r.get("status") == "done"]
    seeds = _sort_values({r.get("seed") for r in done if r.get("seed") is not None})
    over = f"{len(seeds)} seeds ({', '.join(str(v) for v in seeds)})" if seeds else f"{len(done)} jobs"
    if len(done) < len(rows):
        over += f"; {len(rows) - len(done)} unfinished job(s) not counted"
    shown = [{**({panel: str(e[panel])} if panel else {}), "metric": e["metric"],
              "mean ± sd": _pm(e["mean"], e["sd"], e["metric"]), "n": e["n"],
              "min": fmt_num(e["min"], ".4g"), "max": fmt_num(e["max"], ".4g")} for e in table]
    cols = ([panel] if panel else []) + ["metric", "mean ± sd", "n", "min", "max"]
    return (f"Every numeric metric, mean ± sd (n - 1) over {over}; n counts the finished jobs that report it:\n\n"
            + to_markdown(shown, cols).rstrip())


# ====================================================================================================================
# The whole summary
# ====================================================================================================================


@dataclass
class SummaryResult:
    """What a summary wrote. ``axes``/``heatmap``/``grids`` are set for a two-key sweep only; ``layout``
    says which kind it was; ``chart`` is the figure of any kind (the heatmap, or ``lines_<metric>.png``)."""

    rows: list[dict[str, Any]]
    csv: Path
    markdown: Path
    heatmap: Optional[Path] = None
    axes: Optional[tuple[str, str, str, Optional[str]]] = None
    grids: list[Grid] = field(default_factory=list)
    layout: Optional[Layout] = None
    chart: Optional[Path] = None
    series: list[Series] = field(default_factory=list)
    seeds: list[dict[str, Any]] = field(default_factory=list)


def summarize_multirun(root: str | Path, cfg: SummaryConfig | None = None, out: str | Path | None = None,
                       plot: bool = True) -> SummaryResult:
    """Writes ``summary.csv``, ``summary.md`` and, by what is swept besides the seed (:func:`choose_layout`),
    ``heatmap_<metric>.png`` (two keys), ``lines_<metric>.png`` (one key) or, in summary.md only, a table
    of every numeric metric's mean ± sd over the seeds (none) into ``out`` (default: ``root``). Raises
    ConfigError when ``root`` holds no Hydra job, or for an --x/--y/--metric that is not a column."""
    root = Path(root)
    cfg = cfg or SummaryConfig()
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder (pass a Hydra multirun folder, e.g. multirun/sweep/<name>)")
    rows = collect(root)
    if not rows:
        raise ConfigError(f"{root} holds no Hydra job folders (none has .hydra/overrides.yaml): pass a multirun folder")
    out = Path(out) if out is not None else root
    csv_path = write_csv(rows, out / "summary.csv")
    done = sum(r["status"] == "done" for r in rows)
    text = [f"# Multirun summary: {root}", "", f"{len(rows)} jobs, {done} with metrics.json. Table: `summary.csv`.", ""]
    res = SummaryResult(rows, csv_path, out / "summary.md")
    try:
        layout = choose_layout(rows, cfg)
    except ConfigError as exc:
        if any(v is not None for v in (cfg.x, cfg.y, cfg.metric)):
            raise
        text.append(f"No chart: {exc}")
        layout = None
    res.layout = layout
    if layout is not None and layout.kind == "heatmap":
        assert layout.x and layout.y and layout.metric
        x, y, metric, panel = layout.x, layout.y, layout.metric, layout.panel
        grids = heatmap_grids(rows, x, y, metric, panel)
        res.axes, res.grids = (x, y, metric, panel), grids
        if plot:
            res.heatmap = res.chart = plot_heatmaps(
                grids, x, y, metric, panel, out / f"heatmap_{metric}.png",
                title=f"{metric} over {x} x {y}" + (f", one panel per {panel}" if panel else ""))
            text += [f"![{metric}]({res.heatmap.name})", ""]
        text.append(grids_markdown(grids, x, y, metric, panel))
    elif layout is not None and layout.kind == "lines":
        assert layout.x and layout.metric
        x, metric, panel = layout.x, layout.metric, layout.panel
        res.series = line_series(rows, x, metric, panel)
        if plot:
            seeds = any(int(c) > 1 for ser in res.series for c in ser.count)
            res.chart = plot_lines(res.series, x, metric, panel, out / f"lines_{metric}.png",
                                   title=f"{metric} over {x}" + (", mean ± sd over seeds" if seeds else "")
                                   + (f", one panel per {panel}" if panel else ""))
            text += [f"![{metric}]({res.chart.name})", ""]
        text.append(lines_markdown(res.series, x, metric, panel))
    elif layout is not None:
        res.seeds = seed_table(rows, layout.panel)
        swept = swept_keys(rows)
        text.append("Nothing is swept but the seed: no chart." if swept == ["seed"] else
                    f"No swept key to chart ({'it sweeps ' + ', '.join(swept) if swept else 'nothing is swept'}).")
        text.append("")
        text.append(seeds_markdown(res.seeds, rows, layout.panel) if res.seeds else "No job reports a number.")
    write_text_atomic(res.markdown, "\n".join(text).rstrip() + "\n")
    return res


class SummaryCallback(Callback):
    """Hydra callback: at the end of a multirun, summarise its folder with the config's ``summary`` section
    (when the app has one); a failure is logged, never raised (the jobs' results are already on disk)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(str(config.hydra.sweep.dir))
        s = config.get("summary") or {}
        cfg = SummaryConfig(**{k: s.get(k) for k in ("x", "y", "metric", "panel")})
        try:
            res = summarize_multirun(root, cfg)
        except Exception as exc:  # noqa: BLE001 - a summary must not turn a finished sweep into a failure
            log.warning("no multirun summary for %s: %s", root, exc)
            return
        log.info("multirun summary: %s%s", res.csv, f", {res.heatmap}" if res.heatmap else "")
