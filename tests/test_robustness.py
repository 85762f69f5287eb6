"""Nothing lost, nothing silent: run folders, divergence, config values, bad checkpoints, full disks.

Each class of problem is driven through the real command line (``python -m enas_rnn.cli.<app>``) on the
tiny corpus: one readable line on stderr, exit status 2, and no file of an earlier run changed.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, compose_app

import enas_rnn.supernet as supernet_mod
from enas_rnn.searchrun import run_search
from enas_rnn.checkpoint import LAST, load_resumable, previous, save_checkpoint
from enas_rnn.conf import validate
from enas_rnn.errors import CheckpointError, ConfigError
from enas_rnn.runfolder import RunFolder
from enas_rnn.search import SearchDiverged

SMOKE = ["experiment=smoke", "train.max_steps=20", "train.checkpoint_every=5", "train.eval_every=10"]


def cli(app: str, *args: str, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def limit() -> None:  # a full disk: writes past this size fail with EFBIG (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", f"enas_rnn.cli.{app}", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env, preexec_fn=limit if limit_bytes else None)


def one_line_error(res: subprocess.CompletedProcess, *fragments: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout[-1500:], res.stderr[-3000:])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a folder, Hydra's record and the logs included: a refused command changes none of them."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------- folder reuse
def test_a_finished_run_is_never_replaced_and_a_running_one_is_refused(tiny_corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    ok = cli("train", *SMOKE, f"data.root={tiny_corpus}", f"hydra.run.dir={run}")
    assert ok.returncode == 0, ok.stderr[-2000:]
    last = json.loads(ok.stdout.strip().splitlines()[-1])
    assert last["run_dir"] == str(run) and last["seed"] == 0  # the final line names its folder
    before = snapshot(run)
    again = cli("train", *SMOKE, "train.lr=5", f"data.root={tiny_corpus}", f"hydra.run.dir={run}")
    one_line_error(again, "already holds a finished run", f"resume={run}", "another folder")
    assert snapshot(run) == before
    # resume= with an override that cannot apply is an error, not silently ignored
    one_line_error(cli("train", f"resume={run}", "train.lr=5"), "cannot apply", "train.lr=5", "the run has train.lr=20")
    # a concurrent start into a folder in use is refused
    busy = tmp_path / "busy"
    holder = RunFolder(busy, "enas-train")
    holder._lock(wait=False)
    try:
        one_line_error(cli("train", *SMOKE, f"data.root={tiny_corpus}", f"hydra.run.dir={busy}"), "in use")
    finally:
        holder._unlock()


def test_search_into_a_finished_search_is_refused(tiny_corpus: Path, tmp_path: Path) -> None:
    cfg = compose_app("search", ["experiment=smoke", f"data.root={tiny_corpus}", "search.epochs=1"])
    run_search(cfg, tmp_path / "s")
    before = snapshot(tmp_path / "s")
    with pytest.raises(ConfigError, match="already holds a finished run"):
        run_search(cfg, tmp_path / "s", mode="new")
    assert snapshot(tmp_path / "s") == before
    # and a train run cannot resume a search
    one_line_error(cli("train", f"resume={tmp_path / 's'}"), "not an enas-train run", "enas-search resume=")


# ---------------------------------------------------------------------------------------- divergence
def test_divergence_is_a_result_not_a_success(tiny_corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "boom"
    res = cli("train", *SMOKE, "train.lr=1e9", "train.clip=1e9", "train.max_nonfinite=1000",
              f"data.root={tiny_corpus}", f"hydra.run.dir={run}")
    one_line_error(res, "diverged")
    assert not (run / "metrics.json").exists()
    json.loads((run / "diverged.json").read_text())  # strict JSON: no NaN/Infinity tokens
    assert "Infinity" not in (run / "diverged.json").read_text()


def test_a_search_whose_children_all_diverge_writes_no_best(tiny_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(supernet_mod, "evaluate", lambda *a, **k: math.inf)
    cfg = compose_app("search", ["experiment=smoke", f"data.root={tiny_corpus}", "search.epochs=1"])
    with pytest.raises(SearchDiverged, match="no best genotype"):
        run_search(cfg, tmp_path / "s")
    assert not (tmp_path / "s" / "best_genotype.json").exists()
    text = (tmp_path / "s" / "metrics.json").read_text() + (tmp_path / "s" / "search_history.jsonl").read_text()
    assert "Infinity" not in text and "NaN" not in text
    for line in (tmp_path / "s" / "search_history.jsonl").read_text().splitlines():
        assert json.loads(line)["ppl"] is None  # a diverged child's perplexity is null, not Infinity


# ---------------------------------------------------------------------------------------- config values
@pytest.mark.parametrize("override, fragment", [
    ("search.shared_steps=-1", "search.shared_steps=-1: valid values are an integer >= 1 or null"),
    ("space.num_nodes=0", "space.num_nodes=0: valid values are an integer in [1, 64]"),
    ("space.name=foo", "space.name='foo': valid values are one of enas, lstm"),
    ("train.lr=inf", "train.lr=inf: valid values are a finite number > 0"),
    ("screen.mrs.quantile=1.5", "screen.mrs.quantile=1.5"),
    ("search.degenerate=maybe", "one of mask, penalty, resample, off"),
])
def test_every_value_is_checked_before_any_work(override: str, fragment: str) -> None:
    cfg = compose_app("search", ["experiment=smoke", override])
    with pytest.raises(ConfigError) as e:
        validate(cfg, "enas-search")
    assert fragment in str(e.value)


def test_cli_config_errors_are_one_line(tmp_path: Path) -> None:
    one_line_error(cli("search", "experiment=smoke", "search.shared_steps=-1", f"hydra.run.dir={tmp_path / 'a'}"),
                   "search.shared_steps=-1", "valid values")
    one_line_error(cli("train", "train.lrr=1"), "unknown config key 'train.lrr'", "valid keys there: checkpoint_every")
    assert not (tmp_path / "a" / "checkpoints").exists()


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
    res = cli("train", f"resume={run}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from the checkpoint before it" in res.stdout + res.stderr
    assert "last.unreadable.1.pt" in res.stdout + res.stderr
    assert torch.load(previous(ckpts / LAST), weights_only=True)["step"] >= good  # a readable prev survived
    # both unreadable: a message that says what works, without torch's advice to drop weights_only
    previous(ckpts / LAST).write_bytes(b"garbage")
    (ckpts / LAST).write_bytes(b"garbage")
    line = one_line_error(cli("train", f"resume={run}"), "cannot be resumed", "Start a new run")
    assert "weights_only" not in line


def test_a_full_disk_or_unwritable_output_is_one_clear_line(tiny_corpus: Path, tmp_path: Path) -> None:
    run = tmp_path / "full"
    res = cli("train", *SMOKE, f"data.root={tiny_corpus}", f"hydra.run.dir={run}", limit_bytes=20_000)
    one_line_error(res, "cannot write checkpoint", "disk full")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    ckpt = tmp_path / "ok" / "checkpoints" / "best.pt"
    assert cli("train", *SMOKE, f"data.root={tiny_corpus}", f"hydra.run.dir={tmp_path / 'ok'}").returncode == 0
    one_line_error(cli("export", f"checkpoint={ckpt}", f"out={blocker / 'sub'}"), "cannot create the output folder")


def test_save_checkpoint_keeps_the_previous_one_and_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "c" / "last.pt"
    save_checkpoint(path, {"config": {}, "state_dicts": {}, "step": 1})
    save_checkpoint(path, {"config": {}, "state_dicts": {}, "step": 2})
    assert torch.load(previous(path), weights_only=True)["step"] == 1
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        save_checkpoint(tmp_path / "file" / "last.pt", {"config": {}})
