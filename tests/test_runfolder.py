"""The one run-folder protocol: fresh, resume, reuse or refuse - and a refused claim changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from enas_rnn.errors import ConfigError, TrainingDiverged
from enas_rnn.runfolder import Claim, RunFolder, RunFolderBusy, check_resume_overrides, diff_keys, identity_of


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_identity_drops_what_does_not_change_a_result() -> None:
    ident = identity_of({"train": {"lr": 1.0, "progress": True}, "device": "cuda", "resume": "x", "experiment": "s",
                         "launcher": {"name": "local"}, "seed": 3})
    assert ident == {"train": {"lr": 1.0}, "seed": 3}
    assert diff_keys({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}) == ["a.c"]


def test_fresh_then_refused_then_resumed_then_reused(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "r", "enas-train")
    with run.session({"x": 1}, "new", log_file="train.log", hydra_record={"overrides.yaml": "- x=1\n"}) as claim:
        assert claim == Claim.fresh
        (run.path / "work.txt").write_text("step 1")
    assert json.loads((run.path / "run.json").read_text())["status"] == "running"  # not finished: no finish()
    before = files(run.path)
    with pytest.raises(ConfigError, match="unfinished run.*resume="):
        with run.session({"x": 1}, "new"):
            pass
    with pytest.raises(ConfigError, match="differs in x"):
        with run.session({"x": 2}, "job"):
            pass
    assert files(run.path) == before  # refused: nothing changed, Hydra's record and the log included
    with run.session({"x": 1}, "resume") as claim:
        assert claim == Claim.resume
        run.finish()
    rec = run.record()
    assert rec["status"] == "finished" and len(rec["invocations"]) == 2
    assert (run.path / ".hydra" / "overrides.yaml").read_text() == "- x=1\n"
    done = files(run.path)
    with run.session({"x": 1}, "job") as claim:
        assert claim == Claim.reuse
    with pytest.raises(ConfigError, match="already holds a finished run"):
        with run.session({"x": 1}, "new"):
            pass
    assert files(run.path) == done  # a reuse writes nothing either


def test_another_apps_folder_is_refused_by_name(tmp_path: Path) -> None:
    with RunFolder(tmp_path, "enas-search").session({}, "new"):
        pass
    with pytest.raises(ConfigError, match="holds an enas-search run.*enas-search resume="):
        RunFolder(tmp_path, "enas-train").decide({}, "resume")


def test_a_run_that_failed_before_any_work_does_not_block_the_next(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "r", "enas-train")
    with pytest.raises(ConfigError, match="bad data"):
        with run.session({"x": 1}, "new", log_file="train.log", hydra_record={"config.yaml": "x: 1\n"}):
            raise ConfigError("bad data")
    assert not (tmp_path / "r").exists()  # released: the folder it created is gone again
    with run.session({"x": 2}, "new") as claim:  # the corrected command starts there afresh
        assert claim == Claim.fresh


def test_a_diverged_run_is_a_result_read_back(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "r", "enas-train")
    with pytest.raises(TrainingDiverged):
        with run.session({"x": 1}, "new"):
            (run.path / "diverged.json").write_text("{}")
            raise TrainingDiverged("boom")
    assert run.status == "diverged"
    assert run.decide({"x": 1}, "job") == Claim.reuse


def test_a_busy_folder_is_refused(tmp_path: Path) -> None:
    holder = RunFolder(tmp_path / "r", "enas-train")
    with holder.session({}, "new"):
        with pytest.raises(RunFolderBusy, match="in use"):
            with RunFolder(tmp_path / "r", "enas-train").session({}, "resume"):
                pass


def test_times_add_up_over_invocations(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "r", "enas-pipeline")
    with run.session({}, "new"):
        run.add_seconds("search", 30.0)
    with run.session({}, "resume"):
        run.add_seconds("search", 12.5)
        run.add_seconds("select", 4.0)
    assert run.seconds() == {"search": 42.5, "select": 4.0}


def test_resume_overrides_must_agree_with_the_run() -> None:
    saved = {"train": {"lr": 20.0, "progress": False}, "device": "cpu", "seed": 0}
    given = OmegaConf.create({"train": {"lr": 5.0, "progress": True}, "device": "cuda", "seed": 0})
    check_resume_overrides(["device=cuda", "train.progress=true", "seed=0"], given, OmegaConf.create(saved))
    with pytest.raises(ConfigError, match=r"train.lr=5 \(the run has train.lr=20.0\)"):
        check_resume_overrides(["train.lr=5"], given, OmegaConf.create(saved))
