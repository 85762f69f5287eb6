"""Checkpoint recovery keeps what is good: an unreadable last.pt is set aside under its own name, never
rotated over the readable last.prev.pt it fell back to."""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Callable

import pytest
import torch

from enas_rnn.checkpoint import (
    LAST,
    checkpoint_dir,
    load_resumable,
    previous,
    save_checkpoint,
    unreadable_name,
)
from enas_rnn.errors import CheckpointError


def _payload(step: int) -> dict:
    return {"config": {"seed": 0}, "state_dicts": {"model": {"w": torch.full((3,), float(step))}}, "step": step}


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])  # a crash mid-copy


def _not_a_checkpoint(path: Path) -> None:
    torch.save({"weights": torch.zeros(2)}, path)  # a readable torch file, but not ours


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a checkpoint at all")


def _refused_pickle(path: Path) -> None:
    torch.save({**_payload(9), "extra": PurePosixPath("x")}, path)  # a Python object weights_only refuses


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "truncated": _truncated, "not_a_checkpoint": _not_a_checkpoint, "garbage": _garbage,
    "refused_pickle": _refused_pickle,
}


def _run_with_two_checkpoints(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    save_checkpoint(checkpoint_dir(run) / LAST, _payload(1))
    save_checkpoint(checkpoint_dir(run) / LAST, _payload(2))
    return run


@pytest.mark.parametrize("corrupt", sorted(CORRUPTIONS))
def test_resume_falls_back_and_the_next_save_keeps_a_readable_prev(tmp_path: Path, corrupt: str,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    run = _run_with_two_checkpoints(tmp_path)
    last = checkpoint_dir(run) / LAST
    CORRUPTIONS[corrupt](last)
    bad_bytes = last.read_bytes()
    with caplog.at_level(logging.WARNING, logger="enas_rnn.checkpoint"):
        payload = load_resumable(run)
    assert payload["step"] == 1  # the checkpoint before the unreadable one
    aside = checkpoint_dir(run) / "last.unreadable.pt"
    assert aside.read_bytes() == bad_bytes  # the corrupt bytes survive, under their own name
    assert str(aside) in caplog.text and "last.prev.pt (step 1)" in caplog.text
    assert load_resumable(run)["step"] == 1  # last.pt is a readable copy of last.prev.pt now
    # The resumed run saves: last.prev.pt is still readable (step 1, not the corrupt file).
    save_checkpoint(last, _payload(3))
    assert torch.load(previous(last), weights_only=True)["step"] == 1
    assert load_resumable(run)["step"] == 3
    assert aside.read_bytes() == bad_bytes


def test_a_second_unreadable_checkpoint_gets_a_numbered_name(tmp_path: Path) -> None:
    run = _run_with_two_checkpoints(tmp_path)
    last = checkpoint_dir(run) / LAST
    for k in range(2):
        _garbage(last)
        load_resumable(run)
    names = sorted(p.name for p in checkpoint_dir(run).iterdir())
    assert names == ["last.prev.pt", "last.pt", "last.unreadable.1.pt", "last.unreadable.pt"]
    assert unreadable_name(last).name == "last.unreadable.2.pt"


def test_nothing_moves_when_nothing_is_readable(tmp_path: Path) -> None:
    run = _run_with_two_checkpoints(tmp_path)
    last = checkpoint_dir(run) / LAST
    _garbage(last)
    _truncated(previous(last))
    before = sorted(p.name for p in checkpoint_dir(run).iterdir())
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        load_resumable(run)
    assert sorted(p.name for p in checkpoint_dir(run).iterdir()) == before


def test_a_missing_last_falls_back_and_is_restored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A crash between save_checkpoint's two renames leaves last.prev.pt alone: it is the checkpoint, and
    # a copy named last.pt keeps the run recognisable as one to resume.
    run = _run_with_two_checkpoints(tmp_path)
    (checkpoint_dir(run) / LAST).unlink()
    with caplog.at_level(logging.WARNING, logger="enas_rnn.checkpoint"):
        assert load_resumable(run)["step"] == 1
    assert "last.pt is missing" in caplog.text
    assert sorted(p.name for p in checkpoint_dir(run).iterdir()) == ["last.prev.pt", "last.pt"]
    assert torch.load(checkpoint_dir(run) / LAST, weights_only=True)["step"] == 1
