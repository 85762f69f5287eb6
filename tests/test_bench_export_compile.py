"""scripts/bench_export_compile.py runs end to end at toy sizes (no timing is checked)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--cell-only", "--grad"]])
def test_bench_export_compile_runs(extra: list[str]) -> None:
    # The eager backend: the script's plumbing (generated module, both paths, the JSON line), not Inductor.
    args = ["scripts/bench_export_compile.py", "--hidden", "8", "--layers", "1", "--batch", "2", "--lengths", "3", "2",
            "--backend", "eager", *extra]
    res = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    expected = {"compiler_start", "eager_T3", "cell_first", "cell_loop_T3", "cell_loop_T2"}
    if not extra:
        expected |= {"layer_T3_first", "layer_T2_first", "layer_T3_cached"}
    assert set(report["seconds"]) == expected and report["cold_cache"]
    assert all(math.isfinite(v) and v >= 0 for v in report["seconds"].values())
