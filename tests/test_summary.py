"""enas-summary says what seeds support: mean ± sd over seeds when only the seed is swept, a line chart over
one swept key (error bars where seeds vary), the heatmap over two (tests/test_sweep.py). Synthetic job
folders: no training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from enas_rnn.errors import ConfigError
from enas_rnn.summary import (
    SummaryConfig,
    choose_axes,
    choose_layout,
    collect,
    line_series,
    seed_table,
    summarize_multirun,
)


def _job(root: Path, overrides: list[str], metrics: dict | None) -> None:
    job = root / (",".join(overrides) or "default")
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


def test_a_seed_only_multirun_gives_mean_and_sd_of_every_metric(tmp_path: Path) -> None:
    root = tmp_path / "seeds"
    for seed, ppl in ((0, 100.0), (1, 104.0), (2, 108.0)):
        _job(root, [f"seed={seed}"], {"valid_ppl": ppl, "test_ppl": ppl - 2, "steps": 30, "ok": True,
                                      "model": "lstm", "history": [{"step": 1}]})
    _job(root, ["seed=3"], None)  # unfinished: not counted
    rows = collect(root)
    assert choose_layout(rows, SummaryConfig()).kind == "seeds"
    table = {e["metric"]: e for e in seed_table(rows)}
    assert set(table) == {"valid_ppl", "test_ppl", "steps"}  # numbers only: no bool, string, list or the seed
    assert table["valid_ppl"]["mean"] == 104.0 and table["valid_ppl"]["sd"] == 4.0 and table["valid_ppl"]["n"] == 3
    assert (table["test_ppl"]["min"], table["test_ppl"]["max"]) == (98.0, 106.0)
    assert table["steps"]["sd"] == 0.0
    res = summarize_multirun(root)
    md = res.markdown.read_text()
    assert "over 3 seeds (0, 1, 2); 1 unfinished job(s) not counted" in md  # only what was measured
    assert "| valid_ppl | 104 ± 4" in md and "needs two swept keys" not in md
    assert res.heatmap is None and res.chart is None and res.axes is None


def test_a_diverged_seed_shows_as_diverged_not_as_a_mean(tmp_path: Path) -> None:
    root = tmp_path / "seeds"
    _job(root, ["seed=0"], {"valid_ppl": 100.0})
    (root / "seed=1").mkdir()
    (root / "seed=1" / ".hydra").mkdir()
    (root / "seed=1" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=1"]))
    (root / "seed=1" / "metrics.json").write_text('{"valid_ppl": Infinity}')
    table = seed_table(collect(root))
    assert table[0]["mean"] == math.inf and table[0]["n"] == 2
    assert "| valid_ppl | diverged" in summarize_multirun(root).markdown.read_text()


def test_one_swept_key_gives_a_line_with_error_bars_over_seeds(tmp_path: Path) -> None:
    root = tmp_path / "len"
    for seq_len in (5, 10, 20):
        for seed in (0, 1):
            _job(root, [f"task.seq_len={seq_len}", f"seed={seed}"], {"test_acc": 1.0 - seq_len / 40 - 0.1 * seed})
    rows = collect(root)
    layout = choose_layout(rows, SummaryConfig())
    assert (layout.kind, layout.x, layout.y, layout.metric, layout.panel) == ("lines", "task.seq_len", None,
                                                                              "test_acc", None)
    [ser] = line_series(rows, "task.seq_len", "test_acc", None)
    assert ser.xs == [5, 10, 20] and list(ser.count) == [2, 2, 2]
    assert ser.mean[0] == pytest.approx(0.825) and ser.sd[0] == pytest.approx(0.1 / math.sqrt(2))
    with pytest.raises(ConfigError, match="needs two swept keys"):  # the heatmap's own chooser still says so
        choose_axes(rows, SummaryConfig())
    res = summarize_multirun(root)
    assert res.chart == root / "lines_test_acc.png" and res.chart.stat().st_size > 1000 and res.heatmap is None
    md = res.markdown.read_text()
    assert "mean ± sd over the jobs (seeds) at each task.seq_len" in md and "| 5            | 0.82 ± 0.07" in md


def test_a_core_only_sweep_is_the_x_axis_and_with_another_key_the_panel(tmp_path: Path) -> None:
    root = tmp_path / "cores"
    for core in ("lstm", "gru"):
        _job(root, [f"core={core}"], {"test_acc": 0.5 if core == "gru" else 0.4})
    layout = choose_layout(collect(root), SummaryConfig())
    assert (layout.kind, layout.x, layout.panel) == ("lines", "core", None)
    res = summarize_multirun(root)
    assert res.chart is not None and res.chart.is_file() and res.series[0].xs == ["gru", "lstm"]
    root = tmp_path / "cores_len"
    for core in ("lstm", "gru"):
        for seq_len in (5, 10):
            _job(root, [f"core={core}", f"task.seq_len={seq_len}"], {"test_acc": 0.5})
    layout = choose_layout(collect(root), SummaryConfig())
    assert (layout.kind, layout.x, layout.panel) == ("lines", "task.seq_len", "core")
    res = summarize_multirun(root)
    assert [s.panel for s in res.series] == ["gru", "lstm"] and "### core = gru" in res.markdown.read_text()


def test_one_key_given_as_y_is_the_lines_x_and_bad_keys_are_named(tmp_path: Path) -> None:
    root = tmp_path / "lr"
    for lr in (0.001, 0.1, 10):
        _job(root, [f"train.lr={lr}"], {"valid_ppl": 100 + lr})
    rows = collect(root)
    assert choose_layout(rows, SummaryConfig(y="train.lr")).x == "train.lr"
    with pytest.raises(ConfigError, match="x='train.lrr' is not a column"):
        summarize_multirun(root, SummaryConfig(x="train.lrr"))
    res = summarize_multirun(root, SummaryConfig(metric="valid_ppl"))
    assert res.layout is not None and res.layout.kind == "lines" and res.chart is not None and res.chart.is_file()


def test_two_keys_still_give_the_heatmap(tmp_path: Path) -> None:
    root = tmp_path / "grid"
    for lr in (1, 2):
        for bs in (10, 20):
            for seed in (0, 1):
                _job(root, [f"train.lr={lr}", f"data.batch_size={bs}", f"seed={seed}"], {"valid_ppl": lr * bs + seed})
    res = summarize_multirun(root)
    assert res.axes == ("train.lr", "data.batch_size", "valid_ppl", None) and res.layout.kind == "heatmap"
    assert res.heatmap is not None and res.heatmap == res.chart and res.grids[0].mean[1, 1] == 40.5
