"""Small, crash-free statistics helpers (correlations, mean +- sd, Welch's t-test) and a markdown table writer.

The correlation functions wrap :mod:`scipy.stats` but give a defined answer
where scipy warns, raises or returns something surprising:

* pairs where either value is NaN or +-inf are dropped first (pairwise
  complete observations, like R's ``cor(..., use="pairwise")``);
* fewer than 3 remaining pairs, or a constant side, gives ``(nan, nan)``:
  a correlation is undefined there and we say so instead of guessing.

These are used to compare cheap proxies (MRS mean / sd / log p) with trained
errors, as in Camero, Toutouh & Alba (2018, arXiv:1805.07159), whose analysis
scripts use Pearson's r (R's default ``cor``); Spearman and Kendall are added
because rank agreement is what matters when a proxy is used to *rank*
architectures.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Optional

import numpy as np
from scipy import stats as _st

__all__ = [
    "pearson",
    "spearman",
    "kendall",
    "CORRELATIONS",
    "correlation_table",
    "to_markdown",
    "mean_sd",
    "welch_p",
    "fmt_num",
]

_NAN_PAIR: tuple[float, float] = (math.nan, math.nan)


def _clean_pairs(x: Iterable[Any], y: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Return float arrays of the pairs where both x and y are finite.

    ``None`` is treated as missing, like NaN.
    """
    xa = np.asarray([math.nan if v is None else v for v in x], dtype=float).ravel()
    ya = np.asarray([math.nan if v is None else v for v in y], dtype=float).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    return xa[keep], ya[keep]


def _degenerate(x: np.ndarray, y: np.ndarray) -> bool:
    """True when a correlation is undefined: n < 3 or either side constant."""
    if x.size < 3:
        return True
    # np.ptp == 0 is an exact test for "constant"; scipy would warn and give nan.
    return bool(np.ptp(x) == 0.0 or np.ptp(y) == 0.0)


def _run(fn: Callable[..., Any], x: Iterable[Any], y: Iterable[Any]) -> tuple[float, float]:
    xa, ya = _clean_pairs(x, y)
    if _degenerate(xa, ya):
        return _NAN_PAIR
    with warnings.catch_warnings():
        # Near-constant inputs can still trigger scipy warnings; the value is
        # still what we want, so keep the output quiet.
        warnings.simplefilter("ignore")
        stat, p = fn(xa, ya)  # scipy result objects unpack as (statistic, pvalue)
    return float(stat), float(p)


def pearson(x: Iterable[Any], y: Iterable[Any]) -> tuple[float, float]:
    """Pearson's r and its two-sided p-value (NaN pair if undefined)."""
    return _run(_st.pearsonr, x, y)


def spearman(x: Iterable[Any], y: Iterable[Any]) -> tuple[float, float]:
    """Spearman's rho and its two-sided p-value (NaN pair if undefined)."""
    return _run(_st.spearmanr, x, y)


def kendall(x: Iterable[Any], y: Iterable[Any]) -> tuple[float, float]:
    """Kendall's tau-b and its two-sided p-value (NaN pair if undefined)."""
    return _run(_st.kendalltau, x, y)


#: Name -> function, so reports can pick correlation methods by string.
CORRELATIONS: dict[str, Callable[[Iterable[Any], Iterable[Any]], tuple[float, float]]] = {
    "pearson": pearson,
    "spearman": spearman,
    "kendall": kendall,
}


def correlation_table(
    rows: Sequence[Mapping[str, Any]],
    target: str,
    stats: Sequence[str],
    methods: Sequence[str] = ("pearson", "spearman", "kendall"),
) -> list[dict[str, Any]]:
    """Correlate ``target`` with each column in ``stats`` across ``rows``.

    Returns one dict per statistic with keys ``stat``, ``n`` (pairs used after
    dropping missing values) and, per method, ``<method>`` and ``<method>_p``.
    Missing keys in a row count as missing values.
    """
    unknown = [m for m in methods if m not in CORRELATIONS]
    if unknown:
        raise KeyError(f"unknown correlation method(s) {unknown}; known: {sorted(CORRELATIONS)}")
    y = [r.get(target) for r in rows]
    out: list[dict[str, Any]] = []
    for s in stats:
        x = [r.get(s) for r in rows]
        xa, _ = _clean_pairs(x, y)
        entry: dict[str, Any] = {"stat": s, "n": int(xa.size)}
        for m in methods:
            val, p = CORRELATIONS[m](x, y)
            entry[m] = val
            entry[f"{m}_p"] = p
        out.append(entry)
    return out


def _fmt(value: Any, floatfmt: str) -> str:
    """Format one cell: floats with ``floatfmt``, None as empty, '|' escaped."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return format(v, floatfmt)
    if isinstance(value, np.integer):
        value = int(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def to_markdown(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    floatfmt: str = ".3f",
    headers: Mapping[str, str] | None = None,
) -> str:
    """Render ``rows`` as a GitHub-flavoured markdown table.

    Only ``columns`` are shown, in that order; a missing key is an empty cell.
    Columns whose non-empty cells are all numbers are right-aligned.
    ``headers`` optionally renames columns for display.
    """
    if not columns:
        raise ValueError("to_markdown needs at least one column")
    headers = dict(headers or {})
    cells = [[_fmt(r.get(c), floatfmt) for c in columns] for r in rows]
    numeric = []
    for c in columns:
        vals = [r.get(c) for r in rows if r.get(c) is not None]
        numeric.append(bool(vals) and all(_is_number(v) for v in vals))
    head = [_fmt(headers.get(c, c), floatfmt) for c in columns]
    widths = [max([len(h)] + [len(row[i]) for row in cells] + [3]) for i, h in enumerate(head)]

    def line(parts: Sequence[str]) -> str:
        return "| " + " | ".join(parts) + " |"

    out = [line([h.ljust(w) for h, w in zip(head, widths)])]
    out.append(line([("-" * (w - 1) + ":") if num else "-" * w for w, num in zip(widths, numeric)]))
    for row in cells:
        out.append(
            line([v.rjust(w) if num else v.ljust(w) for v, w, num in zip(row, widths, numeric)])
        )
    return "\n".join(out) + "\n"


def mean_sd(values: Sequence[Optional[float]]) -> tuple[float, float]:
    """Mean and sample sd (n - 1); sd is nan for one value; inf values propagate (a diverged run)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return math.nan, math.nan
    if any(math.isinf(v) for v in vals):
        return math.inf, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else math.nan)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch t-test p-value (unequal variances); nan when undefined (n < 2, constant, inf)."""
    xs, ys = [float(v) for v in a], [float(v) for v in b]
    if len(xs) < 2 or len(ys) < 2 or not all(math.isfinite(v) for v in xs + ys):
        return math.nan
    if statistics.pstdev(xs) == 0 and statistics.pstdev(ys) == 0:
        return math.nan
    return float(_st.ttest_ind(xs, ys, equal_var=False).pvalue)


def fmt_num(v: Any, fmt: str, missing: str = "") -> str:
    """A table cell: ``format(v, fmt)``; ``missing`` for None or NaN, "diverged" for an infinite value,
    and 4 significant digits instead of a fixed-point format at 1e7 or more."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return missing
    if isinstance(v, float) and math.isinf(v):
        return "diverged"
    if isinstance(v, float) and fmt.endswith("f") and abs(v) >= 1e7:
        return format(v, ".4g")  # an exploded perplexity: 1.159e+66, not a 67-digit number
    return format(v, fmt)
