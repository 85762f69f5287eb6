"""Successive halving on the synthetic corpus: rungs, continued runs, the budget, determinism, resume, fidelity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import compose_app

import enas_rnn.apps.pipeline as pipeline_mod
import enas_rnn.selection as selection_mod
from enas_rnn.apps.pipeline import compare_config, stage_search, stage_select
from enas_rnn.checkpoint import load_checkpoint
from enas_rnn.comparison import make_run_config
from enas_rnn.conf import validate
from enas_rnn.errors import ConfigError
from enas_rnn.genotype import get_named
from enas_rnn.launch import make_executor
from enas_rnn.model import CoreKind
from enas_rnn.selection import fidelity, rung_plan
from enas_rnn.trainrun import train_lm

SMOKE = ["experiment=smoke", "select.candidates=4", "select.min_steps=3", "select.eta=2", "train.max_steps=16",
         "search.derive_samples=12"]


def pipe_cfg(root: Path, *extra: str):
    return compose_app("pipeline", [*SMOKE, f"data.root={root}", *extra])


def test_rung_plan_is_successive_halving() -> None:
    assert rung_plan(9, 50, 3, 1000) == [(9, 50), (3, 150), (1, 450)]  # the small preset: 450 + 300 + 300 steps
    assert rung_plan(4, 30, 2, 400) == [(4, 30), (2, 60), (1, 120)]
    assert rung_plan(4, 3, 2, 16) == [(4, 3), (2, 6), (1, 12)]
    assert rung_plan(27, 50, 3, 1000) == [(27, 50), (9, 150), (3, 450), (1, 1000)]  # capped at the budget
    assert rung_plan(1, 10, 3, 100) == [(1, 10)]
    with pytest.raises(ConfigError, match=r"select.min_steps=50: valid values are an integer <= train.max_steps=20"):
        rung_plan(9, 50, 3, 20)


@pytest.mark.parametrize("override, fragment", [
    ("select.eta=1", "select.eta=1: valid values are an integer >= 2"),
    ("select.candidates=0", "select.candidates=0: valid values are an integer >= 1"),
    ("select.min_steps=40", "select.min_steps=40: valid values are an integer <= train.max_steps=16"),
    ("select.strategy=best", "select.strategy='best': valid values are one of halving, topk"),
    ("select.prescreen=maybe", "one of none, mrs"),
])
def test_bad_selection_values_are_one_line(override: str, fragment: str, tiny_corpus: Path) -> None:
    with pytest.raises(ConfigError) as e:
        validate(pipe_cfg(tiny_corpus, override), "enas-pipeline")
    assert fragment in str(e.value)


def test_a_paused_run_continues_exactly(tiny_corpus: Path, tmp_path: Path) -> None:
    """A rung pauses a run without changing it: 3 + 9 steps in two calls are the 12 steps of one call."""
    cfg = compare_config(pipe_cfg(tiny_corpus))
    run = make_run_config(cfg, core=CoreKind.cell, seed=0, hidden_size=int(cfg.model.hidden_size))
    g = get_named("lstm")
    first = train_lm(run, tmp_path / "a", g, stop_at=3)
    assert first["step"] == 3 and math.isfinite(first["valid_ppl"])
    second = train_lm(run, tmp_path / "a", g, stop_at=12)
    assert second["step"] == 12 and [h["step"] for h in second["history"]] == [3, 12]
    straight = train_lm(run, tmp_path / "b", g, stop_at=12)
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 12 and a["loop"]["tokens"] == b["loop"]["tokens"]
    for key, value in a["state_dicts"]["model"].items():
        assert torch.equal(value, b["state_dicts"]["model"][key]), key
    assert second["valid_ppl"] == straight["valid_ppl"]
    assert train_lm(run, tmp_path / "a", g, stop_at=12) == second  # asked again: read back, not retrained
    # Finished (the comparison continues the winner's run to the budget): a rung asked again reads back its
    # pause, not the final metrics (a selection run again over finished runs keeps every rung's perplexity).
    final = train_lm(run, tmp_path / "a", g)
    assert final["steps"] == 16 and train_lm(run, tmp_path / "a", g, stop_at=3) == first
    assert train_lm(run, tmp_path / "a", g, stop_at=12) == second and train_lm(run, tmp_path / "a", g) == final


def _select(root: Path, folder: Path, *extra: str) -> dict:
    cfg = pipe_cfg(root, *extra)
    executor = make_executor(cfg.launcher, folder)
    stage_search(cfg, folder, executor)
    return stage_select(cfg, folder, executor)


def test_halving_races_the_candidates_and_measures_fidelity(tiny_corpus: Path, tmp_path: Path) -> None:
    sel = _select(tiny_corpus, tmp_path / "p", "select.references=[lstm]")
    assert [(p["cells"], p["steps"]) for p in sel["plan"]] == [(4, 3), (2, 6), (1, 12)]
    assert [len(r["cells"]) for r in sel["rungs"]] == [4, 2, 1]
    # the survivors of each rung are its best, and only they go on
    for r, nxt in zip(sel["rungs"], sel["rungs"][1:]):
        kept = sorted((c for c in r["cells"] if c["kept"]), key=lambda c: c["valid_ppl"])
        assert [c["hash"] for c in kept] == sorted([c["hash"] for c in nxt["cells"]], key=lambda h: [
            c["valid_ppl"] for c in r["cells"] if c["hash"] == h][0])
        assert max(c["valid_ppl"] for c in kept) <= min(c["valid_ppl"] for c in r["cells"] if not c["kept"])
    # the budget: 4 x 3 + 2 x 3 + 1 x 6 steps for the candidates
    assert sel["training_steps"]["candidates"] == 12 + 6 + 6
    winner = sel["winner"]
    run = tmp_path / "p" / "runs" / sel["winner_run"]
    rec = json.loads((run / "run.json").read_text())
    assert rec["status"] == "paused" and set(rec["pauses"]) == {"3", "6", "12"}  # one run, continued rung by rung
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 12
    for c in sel["candidates"]:
        steps = [int(k) for k in c["valid_ppl"]]
        if c["hash"] == winner:
            assert steps == [3, 6, 12] and c["fate"] == "winner"
        elif len(steps) == 1:
            assert c["fate"] == "eliminated at rung 0 (3 steps)"
    # the reference ran every rung and the record says whether a searched cell outran it
    (ref,) = sel["references"]
    assert ref["label"] == "lstm" and [int(k) for k in ref["valid_ppl"]] == [3, 6, 12]
    assert all(isinstance(r["searched_outran_references"], bool) for r in sel["rungs"])
    # fidelity: the supernet against rung 0 over all 4, rung 0 against rung 1 over its 2 survivors (n < 3: null)
    fid = sel["fidelity"]
    assert fid["supernet"]["n"] == 4 and fid["supernet"]["tau"] is not None
    assert fid["rung0"]["n"] == 2 and fid["rung0"]["tau"] is None and "n = 2 < 3" in fid["rung0"]["reason"]
    text = (tmp_path / "p" / "select" / "selection.json").read_text()
    assert "NaN" not in text and "Infinity" not in text and json.loads(text)["winner"] == winner


@pytest.mark.slow
def test_same_seed_same_survivors_and_an_interrupted_stage_resumes(tiny_corpus: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ref = _select(tiny_corpus, tmp_path / "a")
    real = selection_mod._train_rung
    calls = {"n": 0}

    def crash_at_rung_1(cells, steps, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(cells, steps, *args, **kwargs)

    monkeypatch.setattr(selection_mod, "_train_rung", crash_at_rung_1)
    with pytest.raises(KeyboardInterrupt):
        _select(tiny_corpus, tmp_path / "b")
    assert json.loads((tmp_path / "b" / "select" / "rungs.json").read_text())[0]["steps"] == 3  # rung 0 kept
    monkeypatch.setattr(selection_mod, "_train_rung", real)
    again = _select(tiny_corpus, tmp_path / "b")
    for key in ("winner", "rungs", "fidelity", "training_steps"):
        assert again[key] == ref[key], key


@pytest.mark.slow
def test_topk_keeps_the_old_selection(tiny_corpus: Path, tmp_path: Path) -> None:
    sel = _select(tiny_corpus, tmp_path / "p", "select.strategy=topk", "select.k=2", "select.max_steps=5")
    assert sel["strategy"] == "topk" and len(sel["candidates"]) == 2 and sel["plan"] == [{"cells": 2, "steps": 5}]
    assert sel["fidelity"]["supernet"]["against"] == "retrained (5 steps)"


def test_fidelity_signs_and_missing_values() -> None:
    assert fidelity([1, 2, 3, 4], [10, 20, 30, 40], "x")["tau"] == pytest.approx(1.0)
    assert fidelity([1, 2, 3, 4], [10, 20, 30, 40], "x", higher_is_better=True)["tau"] == pytest.approx(-1.0)
    out = fidelity([1, None, 3, math.inf], [1, 2, 3, 4], "x")
    assert out["n"] == 2 and out["tau"] is None


def test_search_from_must_be_a_finished_search(tiny_corpus: Path, tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ConfigError, match="holds no enas-search run"):
        pipeline_mod.run_pipeline(pipe_cfg(tiny_corpus, f"search_from={tmp_path / 'nothing'}"), tmp_path / "p")


@pytest.mark.slow
def test_mrs_prescreen_scores_the_pool_and_enters_the_fidelity(tiny_corpus: Path, tmp_path: Path) -> None:
    sel = _select(tiny_corpus, tmp_path / "p", "select.prescreen=mrs")
    assert all(c["mrs_mean"] is not None for c in sel["candidates"])
    assert all(c["flagged"] for c in sel["screened_out"])  # screened out: flagged, replaced from the pool
    assert "mrs" in sel["fidelity"] and sel["fidelity"]["mrs"]["n"] == len(sel["candidates"])


def test_the_search_takes_the_first_slot_and_the_baselines_are_submitted_beside_it(tiny_corpus: Path,
                                                                                   tmp_path: Path) -> None:
    """With launcher=local the stages wait for the search, not for the baselines: the search is queued first
    (the baselines held both slots of a 2-core machine for the first 2.5 minutes before this)."""
    from enas_rnn.comparison import submit_baselines
    from enas_rnn.launch import Executor, Handle

    order: list[str] = []

    class Recorder(Executor):
        def __init__(self) -> None:
            super().__init__("local", 2, 1)

        def submit(self, job):  # records the order instead of starting processes
            order.append(job.name)
            return Handle(job, _value={"best_ppl": 1.0}, _done=True)

    cfg = pipe_cfg(tiny_corpus, "launcher=local")
    ex = Recorder()
    got = stage_search(cfg, tmp_path, ex, lambda: submit_baselines(compare_config(cfg), tmp_path / "compare", ex))
    assert got == {"best_ppl": 1.0} and order[0] == "search" and len(order) > 1
    assert all(name.startswith("nn_lstm") for name in order[1:])
