"""The benchmark and GPU-check scripts run end to end (toy sizes or few cells; no timing is checked).

A bench that nobody runs breaks quietly when a config or an API it reads changes; these keep them
runnable. Numbers are only checked to be there and finite.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, write_tiny_corpus

pytestmark = pytest.mark.slow


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    return res


def test_gpu_check_smoke_runs_every_part(tmp_path: Path) -> None:
    # The script a GPU session runs once, on the CPU at toy sizes: gpu tests, both benches, a search.
    _run(["scripts/gpu_check.py", "--out", str(tmp_path), "--smoke"], 600)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    for part in ("gpu_tests", "bench_cell", "bench_shared", "paper_search"):
        assert report[part]["rc"] == 0, (part, report[part])
    shared = report["bench_shared"]["report"]["results"]
    steps = [r for name, r in shared.items() if "shared step" in name]
    assert steps and all(math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0 for r in steps)


def test_bench_mrs_runs(tmp_path: Path) -> None:
    root = write_tiny_corpus(tmp_path / "tiny")
    res = _run(["scripts/bench_mrs.py", "--cells", "1", "--repeats", "1", "--train-steps", "1",
                "--data-root", str(root)], 300)
    report = json.loads(res.stdout[res.stdout.index("{"):])
    assert set(report["seconds"]) == {"mrs_screen", "mrs_study", "hidden_cov", "shared_eval", "train"}
    assert all(math.isfinite(v) and v > 0 for v in report["seconds"].values())


def test_growth_and_distance_scripts_run(tmp_path: Path) -> None:
    res = _run(["scripts/distance_baseline.py", "--space", "lstm", "--nodes", "8", "--template", "memory",
                "--cells", "20"], 300)
    assert "% unbounded" in res.stdout and "distance to lstm" in res.stdout and "(20 of 20 exact)" in res.stdout
    res = _run(["scripts/mask_redraws.py", "--draws", "20"], 300)
    assert "degenerate and unbounded masked" in res.stdout
    out, png = tmp_path / "oracle.json", tmp_path / "oracle.png"
    res = _run(["scripts/oracle_search.py", "--steps", "4", "--seeds", "1", "--window", "2", "--out", str(out),
                "--png", str(png)], 600)
    doc = json.loads(out.read_text())
    assert len(doc["results"]) == 12 and png.stat().st_size > 1000 and "| lstm 8 template=memory |" in res.stdout
    assert "| lstm 8 template=gates |" in res.stdout
    assert all(len(r["runs"][0]["window_mean"]) == 2 for r in doc["results"])
