"""One executor for a stage's independent trainings: serial, local processes (submitit), SLURM (submitit)."""

from __future__ import annotations

import math
import os
import stat
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from enas_rnn.errors import ConfigError
from enas_rnn.genotype import get_named
from enas_rnn.launch import Job, JobsFailed, cpu_count, make_executor


def square(x: int) -> int:
    return x * x


def launcher(**kw) -> OmegaConf:
    return OmegaConf.create({"name": "serial", "jobs": None, "slurm": {"partition": None, "gpus_per_job": 1,
                             "cpus_per_job": 4, "time_min": 240, "mem_gb": None, "account": None, "qos": None,
                             "constraint": None, "setup": []}, **kw})


def test_serial_runs_jobs_here_in_order(tmp_path: Path) -> None:
    ex = make_executor(launcher(), tmp_path)
    assert not ex.parallel
    assert ex.run([Job(f"j{i}", tmp_path / f"j{i}", square, (i,)) for i in range(4)]) == [0, 1, 4, 9]


@pytest.mark.slow
def test_local_runs_processes_and_reports_a_failed_job(tmp_path: Path) -> None:
    """Jobs are module-level functions of an installed package (a process imports them by name)."""
    ex = make_executor(launcher(name="local", jobs=2), tmp_path)
    assert ex.parallel and ex.capacity == 2 and ex.threads == max(1, cpu_count() // 2)
    assert ex.run([Job(f"j{i}", tmp_path / f"j{i}", math.factorial, (i,)) for i in range(4)]) == [1, 1, 2, 6]
    names = ["lstm", "no_such_cell", "enas_paper"]
    with pytest.raises(JobsFailed, match=r"job j1 failed \(folder .*j1\): .*no_such_cell"):
        ex.run([Job(f"j{i}", tmp_path / f"j{i}", get_named, (n,)) for i, n in enumerate(names)])
    assert (tmp_path / ".submitit").is_dir()  # the jobs' own logs


@pytest.mark.slow
def test_waiting_on_a_queued_job_starts_it_when_a_slot_frees(tmp_path: Path) -> None:
    # One slot: the second job waits in the queue. Its result() alone (no wait()/run() around it) must start
    # it once the first has finished - the pipeline waits on its search this way while baselines run.
    ex = make_executor(launcher(name="local", jobs=1), tmp_path)
    first = ex.submit(Job("a", tmp_path / "a", math.factorial, (5,)))
    second = ex.submit(Job("b", tmp_path / "b", math.factorial, (6,)))
    assert second._sub is None  # queued, no process yet
    assert second.result() == 720 and first.result() == 120


@pytest.mark.slow
def test_a_job_submitted_twice_runs_once_and_another_job_for_its_folder_waits(tmp_path: Path) -> None:
    # The pipeline submits the baselines beside the search and again in its compare stage: a job still queued
    # or running must not start a second process in its folder (the run folder's lock would refuse it).
    ex = make_executor(launcher(name="local", jobs=2), tmp_path)
    folder = tmp_path / "run"
    first = ex.submit(Job("a", folder, time.sleep, (1.0,)))
    assert ex.submit(Job("a", folder, time.sleep, (1.0,))) is first
    other = ex.submit(Job("b", folder, math.factorial, (5,)))  # the same folder, another job: after the first
    elsewhere = ex.submit(Job("c", tmp_path / "c", math.factorial, (4,)))
    assert other._sub is None and elsewhere._sub is not None  # the free slot went to the job of another folder
    assert ex.wait([first, other, elsewhere]) == [None, 120, 24]
    assert ex.submit(Job("a", folder, math.factorial, (3,))).result() == 6  # a finished job: a new one runs


def test_more_jobs_than_cores_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_executor(launcher(name="local", jobs=cpu_count() + 3), tmp_path)
    assert "more than this machine's" in caplog.text


def test_slurm_without_sbatch_is_one_line_and_starts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="launcher=slurm needs SLURM's sbatch, which is not on PATH"):
        make_executor(launcher(name="slurm"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_slurm_job_spec_asks_for_what_the_config_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No cluster here: a stand-in sbatch records the submission script submitit hands it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path / 'submitted.sh'}\necho 'Submitted batch job 4242'\n")
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in (sbatch, bin_dir / "srun"):
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = launcher(name="slurm")
    cfg.slurm.partition, cfg.slurm.time_min, cfg.slurm.setup = "gpu", 90, ["module load cuda"]
    ex = make_executor(cfg, tmp_path / "run")
    handle = ex.submit(Job("j0", tmp_path / "run" / "j0", square, (3,)))
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=90",
                 "#SBATCH --cpus-per-task=4", "module load cuda"):
        assert line in script, line
    assert handle._sub.job_id == "4242"


@pytest.mark.slow
def test_a_multirun_of_pipelines_through_hydras_submitit_launcher_is_summarised(tiny_corpus: Path,
                                                                                tmp_path: Path) -> None:
    """-m hydra/launcher=submitit_local runs the seeds' pipelines side by side; enas-summary gives mean ± sd."""
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "mr"
    res = subprocess.run([sys.executable, "-m", "enas_rnn.cli.pipeline", "-m", "hydra/launcher=submitit_local",
                          "experiment=smoke", "seed=0,1", f"data.root={tiny_corpus}", f"hydra.sweep.dir={out}"],
                         cwd=REPO, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = sorted(p.name for p in out.iterdir() if p.is_dir() and (p / "metrics.json").is_file())
    assert jobs == ["experiment=smoke,seed=0", "experiment=smoke,seed=1"]
    summary = subprocess.run([sys.executable, "-m", "enas_rnn.cli.summary", str(out)], cwd=REPO, capture_output=True,
                             text=True)
    assert summary.returncode == 0, summary.stderr
    text = (out / "summary.md").read_text()
    assert "mean ± sd" in text and "| verdict.cell_test_ppl" in text


def test_the_slurm_multirun_config_asks_for_a_gpu_per_job() -> None:
    """No cluster here: the composed Hydra launcher config of the README's SLURM command is checked instead."""
    from hydra import compose, initialize_config_module

    from enas_rnn.conf import register_configs

    register_configs()
    with initialize_config_module(config_module="enas_rnn.configs", version_base="1.3"):
        cfg = compose("pipeline", ["hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=1",
                                   "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=720",
                                   "experiment=small", "device=cuda"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_node == 1
    assert launcher.partition == "gpu" and launcher.timeout_min == 720
