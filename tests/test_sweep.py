"""enas-sweep and the multirun summary: job folders named after overrides, resumable sweeps, the tidy
table and heatmaps (also for a multirun of another app), readable errors."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, compose_app

import enas_rnn.apps.sweep as sweep_app
from enas_rnn.apps.sweep import run_sweep_job
from enas_rnn.errors import ConfigError, TrainingDiverged
from enas_rnn.runfolder import RunFolder
from enas_rnn.summary import (
    SummaryConfig,
    choose_axes,
    collect,
    heatmap_grids,
    sanitize_dirname,
    summarize_multirun,
)

SWEEP = ["experiment=smoke", "train.max_steps=10", "train.eval_every=5", "task.train_size=64",
         "task.valid_size=16", "task.test_size=32"]


def _run(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_sweep_multirun_is_resumable_and_summarised(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    args = ["-m", *SWEEP, "core=lstm,gru", "task.seq_len=3,5", "model.hidden_size=4,8", f"hydra.sweep.dir={out}"]
    res = _run("enas_rnn.cli.sweep", args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(jobs) == 8
    # Folders are named after the job's overrides (sorted), so a rerun finds them.
    assert ("core=gru,experiment=smoke,model.hidden_size=8,task.seq_len=5,task.test_size=32,"
            "task.train_size=64,task.valid_size=16,train.eval_every=5,train.max_steps=10") in jobs
    first = {j: json.loads((out / j / "metrics.json").read_text()) for j in jobs}
    m = next(iter(first.values()))
    assert m["steps"] == 10 and 0 <= m["test_acc"] <= 1 and m["num_params"] > 0 and m["chance"] == 0.1
    assert {v["core"] for v in first.values()} == {"nn_lstm", "nn_gru"}
    # The end-of-multirun summary: one row per job, and a heatmap over the two swept axes per core.
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {"core", "task.seq_len", "model.hidden_size", "test_acc", "num_params"} <= set(rows[0])
    assert (out / "heatmap_test_acc.png").stat().st_size > 1000
    assert "### core = gru" in (out / "summary.md").read_text()

    # Again with resume=, one job interrupted: only that job trains; the others are reused, their files untouched.
    lost = jobs[3]
    (out / lost / "metrics.json").unlink()
    RunFolder(out / lost, "enas-sweep").update(status="interrupted")
    stamps = {j: (out / j / "metrics.json").stat().st_mtime_ns for j in jobs if j != lost}
    res = _run("enas_rnn.cli.sweep", [*args[:-1], f"resume={out}"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count('"status": "reused"') == 7 and res.stdout.count('"status": "trained"') == 1
    assert stamps == {j: (out / j / "metrics.json").stat().st_mtime_ns for j in stamps}
    again = json.loads((out / lost / "metrics.json").read_text())
    assert again["test_acc"] == first[lost]["test_acc"]  # seeded: the same result


def test_a_job_with_other_settings_is_refused(tmp_path: Path) -> None:
    cfg = compose_app("sweep", SWEEP)
    run_sweep_job(cfg, tmp_path)
    assert run_sweep_job(cfg, tmp_path)["status"] == "reused"
    with pytest.raises(ConfigError, match="differs in train.lr"):
        run_sweep_job(compose_app("sweep", [*SWEEP, "train.lr=0.5"]), tmp_path)


def test_a_diverged_job_is_a_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a, **_k):
        raise TrainingDiverged("21 training steps had a non-finite loss")

    monkeypatch.setattr(sweep_app, "fit_task", boom)
    m = run_sweep_job(compose_app("sweep", [*SWEEP, "core=enas_paper"]), tmp_path)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert m["diverged"] and saved["diverged"] and "test_acc" not in saved and saved["core"] == "enas_paper"


def test_sanitize_dirname() -> None:
    assert sanitize_dirname("cell=/a/b c.json,seed=1") == "cell=_a_b_c.json,seed=1"
    assert sanitize_dirname("") == "default"


def _fake_job(root: Path, name: str, overrides: list[str], metrics: dict | None) -> None:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


@pytest.mark.slow
def test_summary_of_a_train_multirun(tmp_path: Path) -> None:
    # An lr x batch-size grid of enas-train (job folders numbered, as enas-train's multirun names them).
    root = tmp_path / "grid"
    k = 0
    for lr in (5, 20):
        for bs in (10, 20):
            for seed in (0, 1):
                ppl = 100 + lr + bs + seed  # a known surface
                _fake_job(root, str(k), [f"train.lr={lr}", f"data.batch_size={bs}", f"seed={seed}"],
                          {"valid_ppl": ppl, "test_ppl": ppl - 1, "steps": 30, "history": [{"step": 1}]})
                k += 1
    _fake_job(root, str(k), ["train.lr=1e-3", "data.batch_size=10", "seed=0"], None)  # a job that never finished
    rows = collect(root)
    assert len(rows) == 9 and rows[-1]["status"] == "missing" and rows[0]["train.lr"] == 5
    assert "history" not in rows[0] and rows[0]["valid_ppl"] == 115
    assert choose_axes(rows, SummaryConfig())[:2] == ("train.lr", "data.batch_size")  # seed is never an axis
    grid = heatmap_grids(rows, "train.lr", "data.batch_size", "valid_ppl", None)[0]
    assert grid.xs == [0.001, 5, 20] and grid.ys == [10, 20]
    assert grid.mean[1, 2] == pytest.approx(100 + 20 + 20 + 0.5) and grid.count[1, 2] == 2  # mean over seeds
    assert math.isnan(grid.mean[0, 0])
    res = _run("enas_rnn.cli.summary", [str(root), "--x", "train.lr", "--y", "data.batch_size", "--metric",
                                        "valid_ppl"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert (root / "heatmap_valid_ppl.png").stat().st_size > 1000
    with open(root / "summary.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 9 and table[0]["train.lr"] == "5" and table[-1]["valid_ppl"] == ""
    assert "100.5" not in (root / "summary.md").read_text() and "| 10" in (root / "summary.md").read_text()


def test_summary_fills_keys_a_job_did_not_override(tmp_path: Path) -> None:
    # Two sweeps in one folder: the first never set model.hidden_size; its config says what it ran with.
    root = tmp_path / "mixed"
    _fake_job(root, "a", ["task.seq_len=5"], {"test_acc": 0.5})
    (root / "a" / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"model": {"hidden_size": 16}}))
    _fake_job(root, "b", ["task.seq_len=10", "model.hidden_size=8"], {"test_acc": 0.7})
    rows = collect(root)
    assert [r["model.hidden_size"] for r in rows] == [16, 8]
    res = summarize_multirun(root)
    assert res.axes == ("task.seq_len", "model.hidden_size", "test_acc", None)
    assert res.grids[0].mean[1, 0] == 0.5 and res.grids[0].mean[0, 1] == 0.7


@pytest.mark.slow
def test_summary_errors_are_one_line(tmp_path: Path) -> None:
    res = _run("enas_rnn.cli.summary", [str(tmp_path / "nope")], tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "no such folder" in res.stderr
    (tmp_path / "empty").mkdir()
    res = _run("enas_rnn.cli.summary", [str(tmp_path / "empty")], tmp_path)
    assert res.returncode == 2 and "holds no Hydra job" in res.stderr
    _fake_job(tmp_path / "one", "0", ["train.lr=1"], {"valid_ppl": 3.0})
    _fake_job(tmp_path / "one", "1", ["train.lr=2"], {"valid_ppl": 4.0})
    res = _run("enas_rnn.cli.summary", [str(tmp_path / "one"), "--x", "train.lrr", "--y", "train.lr"], tmp_path)
    assert res.returncode == 2 and "train.lrr" in res.stderr and "columns are" in res.stderr
    res = _run("enas_rnn.cli.summary", [str(tmp_path / "one")], tmp_path)  # one axis only: a line chart, no heatmap
    assert res.returncode == 0 and (tmp_path / "one" / "lines_valid_ppl.png").is_file()
    assert not (tmp_path / "one" / "heatmap_valid_ppl.png").exists()
