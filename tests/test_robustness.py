"""Nothing lost, nothing rewritten, nothing silent - every case through the real command line.

Each case runs ``python -m enas_rnn.cli.<app>`` on the tiny corpus (or real PTB where noted). The cases:

* run folders (every app): a fresh run; the same or another command into a finished folder is refused and
  changes no file (Hydra's record and the log included); ``resume=`` of a finished run reads it back and
  changes nothing; ``resume=`` with an override that cannot apply is refused; a folder in use is refused;
  another app's folder is refused naming that app; a run that failed before any work does not block the
  corrected command; a pipeline refuses a second identical command;
* divergence: a non-finite loss, and a run that ends worse than a uniform guess, fail with exit 2 and keep
  ``diverged.json``;
* interrupts: SIGTERM stops a training at the next step with a checkpoint and the resume hint (exit 143);
  ``resume=`` then finishes it; a run interrupted before its first checkpoint restarts cleanly;
* config: unknown keys (also with ``+``), keys without effect, Hydra's own composition errors, presets an
  app lacks, a device this machine lacks, ``launcher=slurm`` without sbatch - one line, exit 2, nothing
  created;
* checkpoints: a corrupt newest checkpoint falls back to the previous one and is set aside, both corrupt is
  one line; a full disk or an unwritable folder is one line.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose_app

import enas_rnn.supernet as supernet_mod
from enas_rnn.checkpoint import LAST, load_resumable, previous, save_checkpoint
from enas_rnn.conf import validate
from enas_rnn.errors import CheckpointError, ConfigError
from enas_rnn.runfolder import RunFolder
from enas_rnn.search import SearchDiverged
from enas_rnn.searchrun import run_search

pytestmark = pytest.mark.slow  # every case starts processes

SMOKE = ["experiment=smoke", "train.max_steps=20", "train.checkpoint_every=5", "train.eval_every=10", "train.lr=5"]


def cli(app: str, *args: str, limit_bytes: int | None = None, env_extra: dict | None = None
        ) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))

    def limit() -> None:  # a full disk: writes past this size fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", f"enas_rnn.cli.{app}", *args], cwd=REPO, capture_output=True,
                          text=True, env=env, preexec_fn=limit if limit_bytes else None)


def one_line_error(res: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> str:
    assert res.returncode == code, (res.returncode, res.stdout[-1500:], res.stderr[-3000:])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a folder, Hydra's record and the logs included: a refused command changes none of them."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------- run folders
def test_train_fresh_refused_resumed_and_read_back(tiny_corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    ok = cli("train", *SMOKE, f"data.root={tiny_corpus}", f"hydra.run.dir={run}")
    assert ok.returncode == 0, ok.stderr[-2000:]
    last = json.loads(ok.stdout.strip().splitlines()[-1])
    assert last["run_dir"] == str(run) and last["seed"] == 0  # the final line names its folder
    assert (run / ".hydra" / "overrides.yaml").is_file() and "done:" in (run / "train.log").read_text()
    before = snapshot(run)
    for args in (SMOKE, [*SMOKE, "train.lr=3"]):  # the same command, and another one
        one_line_error(cli("train", *args, f"data.root={tiny_corpus}", f"hydra.run.dir={run}"),
                       "already holds a finished run", "nothing was changed", "another folder")
        assert snapshot(run) == before
    one_line_error(cli("train", f"resume={run}", "train.lr=3"), "cannot apply", "train.lr=3", "the run has train.lr=5")
    again = cli("train", f"resume={run}")  # a finished run: read back, nothing changed
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1])["valid_ppl"] == last["valid_ppl"]
    assert snapshot(run) == before
    # a folder in use by another process is refused
    busy = RunFolder(tmp_path / "busy", "enas-train")
    busy._lock(wait=False)
    try:
        one_line_error(cli("train", *SMOKE, f"data.root={tiny_corpus}", f"hydra.run.dir={busy.path}"), "in use")
    finally:
        busy._unlock()


def test_search_and_pipeline_are_refused_into_finished_folders(tiny_corpus: Path, tmp_path: Path) -> None:
    s = tmp_path / "s"
    assert cli("search", "experiment=smoke", f"data.root={tiny_corpus}", f"hydra.run.dir={s}").returncode == 0
    before = snapshot(s)
    one_line_error(cli("search", "experiment=smoke", f"data.root={tiny_corpus}", f"hydra.run.dir={s}"),
                   "already holds a finished run")
    one_line_error(cli("train", f"resume={s}"), "holds an enas-search run", "enas-search resume=")
    assert snapshot(s) == before
    p = tmp_path / "p"
    args = ["experiment=smoke", "train.lr=5", f"data.root={tiny_corpus}", f"hydra.run.dir={p}"]
    assert cli("pipeline", *args).returncode == 0
    before = snapshot(p)
    one_line_error(cli("pipeline", *args), "already holds a finished run", "nothing was changed")
    res = cli("pipeline", f"resume={p}")
    assert res.returncode == 0 and "nothing to do" in res.stdout
    assert snapshot(p) == before  # every number, stage times included, stays


def test_compare_mrs_and_compress_claim_their_folders(tiny_corpus: Path, tmp_path: Path) -> None:
    c = tmp_path / "c"
    cargs = ["experiment=smoke", "cell=lstm", "seeds=[0]", "sizings=[same]", "baselines=[lstm]", "train.lr=5",
             f"data.root={tiny_corpus}"]
    assert cli("compare", *cargs, f"hydra.run.dir={c}").returncode == 0
    before = snapshot(c)
    one_line_error(cli("compare", *cargs, f"hydra.run.dir={c}"), "already holds a finished run")
    assert cli("compare", f"resume={c}").returncode == 0 and snapshot(c) == before
    m = tmp_path / "m"
    margs = ["experiment=smoke", "cells=2", "include_named=false", "train.lr=5", f"data.root={tiny_corpus}"]
    assert cli("mrs", *margs, f"hydra.run.dir={m}").returncode == 0
    before = snapshot(m)
    one_line_error(cli("mrs", *margs, f"hydra.run.dir={m}"), "already holds a finished run")
    assert cli("mrs", f"resume={m}").returncode == 0 and snapshot(m) == before
    t = tmp_path / "t"
    assert cli("train", *SMOKE, f"data.root={tiny_corpus}", f"hydra.run.dir={t}").returncode == 0
    z = tmp_path / "z"
    zargs = ["experiment=smoke", f"run={t}", "device=cpu", "retrain.lr=5"]
    assert cli("compress", *zargs, f"hydra.run.dir={z}").returncode == 0
    before = snapshot(z)
    one_line_error(cli("compress", *zargs, f"hydra.run.dir={z}"), "already holds a finished run")
    assert cli("compress", f"resume={z}").returncode == 0 and snapshot(z) == before


def test_a_run_that_failed_before_any_work_does_not_block_the_next(tiny_corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    empty = tmp_path / "no_data"
    empty.mkdir()
    res = cli("train", *SMOKE, f"data.root={empty}", f"hydra.run.dir={run}")
    assert res.returncode == 2 and res.stderr.startswith("error: ptb data not found") and "Traceback" not in res.stderr
    assert not (run / "run.json").exists()  # released: nothing of the failed start is left to block the next
    assert cli("train", *SMOKE, f"data.root={tiny_corpus}", f"hydra.run.dir={run}").returncode == 0


# ---------------------------------------------------------------------------------------- divergence
def test_divergence_and_worse_than_uniform_are_failures(tiny_corpus: Path, tmp_path: Path, ptb_root: Path) -> None:
    boom = tmp_path / "boom"
    res = cli("train", *SMOKE, "train.lr=1e9", "train.clip=1e9", "train.max_nonfinite=1000",
              f"data.root={tiny_corpus}", f"hydra.run.dir={boom}")
    one_line_error(res, "diverged")
    assert not (boom / "metrics.json").exists() and "Infinity" not in (boom / "diverged.json").read_text()
    worse = tmp_path / "worse"  # clipping keeps the loss finite, but the model ends worse than guessing
    res = cli("train", "experiment=smoke", "train.lr=1000", f"data.root={ptb_root}", f"hydra.run.dir={worse}")
    one_line_error(res, "worse than a uniform guess", "10,000")
    assert (worse / "diverged.json").is_file() and not (worse / "metrics.json").exists()


def test_a_search_whose_children_all_diverge_writes_no_best(tiny_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(supernet_mod, "evaluate", lambda *a, **k: math.inf)
    cfg = compose_app("search", ["experiment=smoke", f"data.root={tiny_corpus}", "search.epochs=1"])
    with pytest.raises(SearchDiverged, match="no best genotype"):
        run_search(cfg, tmp_path / "s")
    assert not (tmp_path / "s" / "best_genotype.json").exists()
    text = (tmp_path / "s" / "metrics.json").read_text() + (tmp_path / "s" / "search_history.jsonl").read_text()
    assert "Infinity" not in text and "NaN" not in text


# ---------------------------------------------------------------------------------------- interrupts
def test_sigterm_ends_with_a_checkpoint_and_the_resume_hint(tiny_corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["experiment=smoke", "train.max_steps=400", "train.epochs=100", "train.checkpoint_every=300",
            "train.eval_every=300", "train.lr=5", f"data.root={tiny_corpus}", f"hydra.run.dir={run}"]
    proc = subprocess.Popen([sys.executable, "-m", "enas_rnn.cli.train", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, OMP_NUM_THREADS="1"))
    log = run / "train.log"
    while proc.poll() is None and not (log.is_file() and "enas-train in" in log.read_text()):
        time.sleep(0.2)  # wait until it trains (no deadline: the step budget bounds the run)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate()
    assert proc.returncode == 143, err[-2000:]
    assert "interrupted at step" in err and f"resume={run}" in err and "Traceback" not in err
    step = torch.load(run / "checkpoints" / LAST, weights_only=True)["step"]
    assert 0 < step < 300 and json.loads((run / "run.json").read_text())["status"] == "interrupted"
    done = cli("train", f"resume={run}", "train.progress=false")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["steps"] == 400


def test_a_run_interrupted_before_its_first_checkpoint_restarts_cleanly(tiny_corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    rf = RunFolder(run, "enas-train")
    # what an interrupted start leaves: the claim (run.json), Hydra's record, a log - no checkpoint
    assert cli("train", *SMOKE, f"data.root={tiny_corpus}", f"hydra.run.dir={run}").returncode == 0
    for p in (run / "checkpoints").iterdir():
        p.unlink()
    (run / "metrics.json").unlink()
    rf.update(status="interrupted")
    res = cli("train", f"resume={run}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["steps"] == 20


# ---------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("override, fragment", [
    ("search.shared_steps=-1", "search.shared_steps=-1: valid values are an integer >= 1 or null"),
    ("space.num_nodes=0", "space.num_nodes=0: valid values are an integer in [1, 64]"),
    ("space.name=foo", "space.name='foo': valid values are one of enas, lstm"),
    ("train.lr=inf", "train.lr=inf: valid values are a finite number > 0"),
    ("screen.mrs.quantile=1.5", "screen.mrs.quantile=1.5"),
    ("search.degenerate=maybe", "one of mask, penalty, resample, off"),
    ("search.controller_steps=0", "search.controller_steps=0: valid values are an integer >= 1 for search.strategy=enas"),
])
def test_every_value_is_checked_before_any_work(override: str, fragment: str) -> None:
    cfg = compose_app("search", ["experiment=smoke", override])
    with pytest.raises(ConfigError) as e:
        validate(cfg, "enas-search")
    assert fragment in str(e.value)


@pytest.mark.parametrize("app, args, fragments", [
    ("search", ["search.shared_steps=-1"], ["search.shared_steps=-1", "valid values"]),
    ("train", ["train.lrr=1"], ["unknown config key 'train.lrr'", "valid keys there: checkpoint_every"]),
    ("train", ["+trian.lr=1"], ["unknown config key 'trian.lr'", "'+' does not add keys"]),
    ("train", ["cell=lstm"], ["cell= has no effect", "model=cell"]),
    ("train", ["space=foo"], ["Could not override 'space'"]),  # Hydra's own error, in enas_rnn's form
    ("train", ["model=nope"], ["Could not find 'model/nope'", "Available options"]),
    ("train", ["train.lr=abc"], ["train.lr"]),
    ("train", ["experiment=quick"], ["experiment=quick is not a preset of enas-train"]),
    ("export", ["experiment=smoke"], ["enas-export has no presets"]),
    ("train", ["device=mps"], ["device=mps", "valid values on this machine are auto, cpu"]),
    ("train", ["device=cuda:7"], ["device=cuda:7"]),
    ("pipeline", ["launcher=slurm"], ["launcher=slurm needs SLURM's sbatch"]),
    ("pipeline", ["launcher=local", "launcher.jobs=0"], ["launcher.jobs=0"]),
    ("sweep", ["model.hidden_size=-4"], ["model.hidden_size=-4"]),
    ("compress", ["run=x", "retrain.max_steps=-1"], ["retrain.max_steps=-1"]),
    ("compress", ["run=x", "compress.kmeans_iters=-1"], ["compress.kmeans_iters=-1"]),
    ("compress", ["run=x", "compress.codebook_lr_scale=inf"], ["compress.codebook_lr_scale=inf"]),
    ("pipeline", ["select.eta=1"], ["select.eta=1: valid values are an integer >= 2"]),
])
def test_cli_config_errors_are_one_line_and_create_nothing(app: str, args: list[str], fragments: list[str],
                                                           tmp_path: Path) -> None:
    folder = tmp_path / "a"
    extra = [] if app == "export" else ["experiment=smoke"] if not any(a.startswith("experiment") for a in args) else []
    one_line_error(cli(app, *extra, *args, f"hydra.run.dir={folder}"), *fragments)
    assert not folder.exists()


# ---------------------------------------------------------------------------------------- checkpoints
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tiny_corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli("train", *SMOKE, f"data.root={tiny_corpus}", f"hydra.run.dir={run}").returncode == 0
    ckpts = run / "checkpoints"
    assert (ckpts / "last.prev.pt").is_file()
    good = torch.load(previous(ckpts / LAST), weights_only=True)["step"]
    (ckpts / LAST).write_bytes((ckpts / LAST).read_bytes()[:500])  # truncated, as after a crash mid-copy
    corrupt = (ckpts / LAST).read_bytes()
    assert load_resumable(run)["step"] == good
    assert (ckpts / "last.unreadable.pt").read_bytes() == corrupt  # set aside, and last.pt is prev's copy now
    (ckpts / LAST).write_bytes(corrupt)
    (run / "metrics.json").unlink()
    RunFolder(run, "enas-train").update(status="interrupted")  # as if killed after its last checkpoint
    res = cli("train", f"resume={run}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from the checkpoint before it" in res.stdout + res.stderr
    assert "last.unreadable.1.pt" in res.stdout + res.stderr
    assert torch.load(previous(ckpts / LAST), weights_only=True)["step"] >= good  # a readable prev survived
    # both unreadable: a message that says what works, without torch's advice to drop weights_only
    RunFolder(run, "enas-train").update(status="interrupted")
    previous(ckpts / LAST).write_bytes(b"garbage")
    (ckpts / LAST).write_bytes(b"garbage")
    line = one_line_error(cli("train", f"resume={run}"), "cannot be resumed", "Start a new run")
    assert "weights_only" not in line


def test_a_full_disk_or_unwritable_output_is_one_clear_line(tiny_corpus: Path, tmp_path: Path) -> None:
    assert cli("train", *SMOKE, f"data.root={tiny_corpus}", f"hydra.run.dir={tmp_path / 'warm'}").returncode == 0
    run = tmp_path / "full"  # (the native build above is cached: the limited process only writes the run)
    res = cli("train", *SMOKE, f"data.root={tiny_corpus}", f"hydra.run.dir={run}", limit_bytes=20_000)
    one_line_error(res, "cannot write checkpoint", "disk full")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    ckpt = tmp_path / "warm" / "checkpoints" / "best.pt"
    one_line_error(cli("export", f"checkpoint={ckpt}", f"out={blocker / 'sub'}"), "cannot create the output folder")


def test_save_checkpoint_keeps_the_previous_one_and_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "c" / "last.pt"
    save_checkpoint(path, {"config": {}, "state_dicts": {}, "step": 1})
    save_checkpoint(path, {"config": {}, "state_dicts": {}, "step": 2})
    assert torch.load(previous(path), weights_only=True)["step"] == 1
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        save_checkpoint(tmp_path / "file" / "last.pt", {"config": {}})
