"""Tests for enas_rnn.stats: correlations against scipy, degenerate inputs, markdown."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from enas_rnn.stats import (
    CORRELATIONS,
    correlation_table,
    kendall,
    pearson,
    spearman,
    to_markdown,
)

X = [0.3, 1.2, 2.2, 2.9, 4.4, 5.1, 6.8, 7.0]
Y = [1.0, 0.7, 2.5, 2.0, 5.5, 4.9, 8.1, 6.6]


@pytest.mark.parametrize(
    "ours, ref",
    [(pearson, st.pearsonr), (spearman, st.spearmanr), (kendall, st.kendalltau)],
)
def test_matches_scipy(ours, ref) -> None:
    stat, p = ours(X, Y)
    ref_stat, ref_p = ref(X, Y)
    assert stat == pytest.approx(float(ref_stat), abs=1e-12)
    assert p == pytest.approx(float(ref_p), rel=1e-9)


def test_negative_correlation_sign() -> None:
    rho, _ = spearman(X, [-v for v in Y])
    assert rho < 0


@pytest.mark.parametrize("fn", [pearson, spearman, kendall])
def test_constant_input_is_nan(fn) -> None:
    stat, p = fn([1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0])
    assert math.isnan(stat) and math.isnan(p)


@pytest.mark.parametrize("fn", [pearson, spearman, kendall])
def test_too_few_points_is_nan(fn) -> None:
    assert all(math.isnan(v) for v in fn([1.0, 2.0], [2.0, 1.0]))
    assert all(math.isnan(v) for v in fn([], []))


def test_nan_pairs_are_dropped() -> None:
    x = X + [math.nan, 3.0, math.inf]
    y = Y + [1.0, None, 2.0]
    assert pearson(x, y) == pytest.approx(pearson(X, Y))
    # Dropping leaves only constant x -> undefined, not a crash.
    assert math.isnan(spearman([1, 1, 1, math.nan], [1, 2, 3, 4])[0])


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        pearson([1, 2, 3], [1, 2])


def test_correlation_table() -> None:
    rows = [{"mae": y, "mean": x, "const": 1.0} for x, y in zip(X, Y)]
    rows.append({"mae": 3.0})  # missing stats count as missing
    table = correlation_table(rows, "mae", ["mean", "const"])
    assert [r["stat"] for r in table] == ["mean", "const"]
    assert table[0]["n"] == len(X)
    assert table[0]["pearson"] == pytest.approx(st.pearsonr(X, Y)[0])
    assert table[0]["kendall_p"] == pytest.approx(st.kendalltau(X, Y)[1])
    assert math.isnan(table[1]["spearman"])
    with pytest.raises(KeyError):
        correlation_table(rows, "mae", ["mean"], methods=["bogus"])
    assert set(CORRELATIONS) == {"pearson", "spearman", "kendall"}


def test_to_markdown() -> None:
    rows = [
        {"name": "a|b", "r": 0.12345, "n": 3},
        {"name": "c", "r": float("nan"), "n": np.int64(4), "extra": "ignored"},
        {"name": "d", "r": None},
    ]
    md = to_markdown(rows, ["name", "r", "n"], floatfmt=".2f", headers={"r": "rho"})
    expected = (
        "| name | rho  | n   |\n"
        "| ---- | ---: | --: |\n"  # numeric columns right-aligned
        "| a\\|b | 0.12 |   3 |\n"  # '|' escaped, float formatted
        "| c    |  nan |   4 |\n"  # NaN spelled out, numpy ints accepted
        "| d    |      |     |\n"  # None / missing -> empty cell
    )
    assert md == expected
    with pytest.raises(ValueError):
        to_markdown(rows, [])


def test_fmt_num_keeps_table_cells_short() -> None:
    from enas_rnn.stats import fmt_num

    assert fmt_num(472.254, ".2f") == "472.25"
    assert fmt_num(1.159e66, ".2f") == "1.159e+66"  # an exploded perplexity, not a 67-digit number
    assert fmt_num(float("inf"), ".2f") == "diverged" and fmt_num(None, ".2f", "–") == "–"
    assert fmt_num(12345678, "d") == "12345678"  # integers keep their format
