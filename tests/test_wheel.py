"""A wheel that runs: built, installed non-editable into a fresh virtual environment, run from elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from conftest import REPO


@pytest.mark.slow
def test_the_wheel_runs_enas_train_from_an_unrelated_directory(ptb_root: Path, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                            "--wheel-dir", str(dist), str(REPO)], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (wheel,) = dist.glob("enas_rnn-*.whl")
    # The fresh environment sees this interpreter's packages (torch and the rest are not downloaded again) but
    # gets its own non-editable enas_rnn, which comes first on its path.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                              "--quiet", str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    where = subprocess.run([str(py), "-c", "import enas_rnn, enas_rnn.configs as c; print(enas_rnn.__file__, "
                            "c.__file__)"], cwd=elsewhere, capture_output=True, text=True, env=env)
    assert where.returncode == 0 and str(env_dir) in where.stdout and str(REPO) not in where.stdout, where.stdout
    run = subprocess.run([str(env_dir / "bin" / "enas-train"), "experiment=smoke", "train.max_steps=4",
                          "train.eval_batches=2", f"data.root={ptb_root}", f"hydra.run.dir={elsewhere / 'run'}"],
                         cwd=elsewhere, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (elsewhere / "run" / "metrics.json").is_file() and (elsewhere / "run" / "run.json").is_file()
