"""enas-search end to end on a tiny corpus: outputs, both spaces and strategies, faults, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import compose_app

from enas_rnn.search import SearchRun
from enas_rnn.searchrun import run_search
from enas_rnn.supernet import load_supernet
from enas_rnn.errors import ConfigError
from enas_rnn.spaces import make_space
from enas_rnn.genotype import Genotype


def search_cfg(root: Path, *extra: str):
    return compose_app("search", ["experiment=smoke", f"data.root={root}", "train.progress=false", *extra])


@pytest.mark.slow
@pytest.mark.parametrize("space", ["lstm", "enas"])
@pytest.mark.parametrize("strategy", ["enas", "random"])
def test_smoke_search_writes_every_output(tiny_corpus: Path, tmp_path: Path, space: str, strategy: str) -> None:
    out = tmp_path / "run"
    metrics = run_search(search_cfg(tiny_corpus, f"space={space}", f"search={strategy}"), out)
    best = Genotype.from_json(out / "best_genotype.json")
    assert best.space == space
    top = json.loads((out / "top_genotypes.json").read_text())
    assert top[0]["hash"] == best.hash() == metrics["best_hash"]
    assert [t["ppl"] for t in top] == sorted(t["ppl"] for t in top)
    assert (out / "best_genotype.png").stat().st_size > 1000
    lines = [json.loads(l) for l in (out / "search_history.jsonl").read_text().splitlines()]
    assert len(lines) == metrics["children_evaluated"]
    # Every proposal of the 10 steps (epochs x controller steps x 1 child) was either evaluated or,
    # being degenerate, penalised without evaluation (random search redraws instead).
    # (mask and random: every step evaluates its child; degenerate draws were redrawn and counted)
    assert metrics["children_evaluated"] == metrics["proposals"] - metrics["degenerate_proposals"] == 10
    assert all(not Genotype.from_dict(l["genotype"]).is_degenerate() for l in lines)
    assert not best.is_degenerate() and not any(t["degenerate"] for t in top)
    for key in ("step", "hash", "genotype", "ppl", "reward", "baseline", "entropy"):
        assert key in lines[0]
    assert metrics["controller_steps"] == 10 and metrics["shared_steps"] == 20
    assert math.isfinite(metrics["best_ppl"])
    assert list((out / "tb").rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_penalty_mode_penalises_without_evaluating(tiny_corpus: Path, tmp_path: Path) -> None:
    metrics = run_search(search_cfg(tiny_corpus, "search.degenerate=penalty"), tmp_path / "p")
    assert metrics["proposals"] == 10 and metrics["degenerate_proposals"] > 0
    assert metrics["children_evaluated"] + metrics["degenerate_proposals"] == 10


@pytest.mark.slow
def test_resume_gives_the_same_search(tiny_corpus: Path, tmp_path: Path) -> None:
    full = run_search(search_cfg(tiny_corpus, "model.dropout_in=0.3"), tmp_path / "full")

    class Kill(Exception):
        pass

    def hook(event: str, n: int) -> None:
        if event == "controller_step" and n == 7:  # mid-way through epoch 2
            raise Kill

    with pytest.raises(Kill):
        run_search(search_cfg(tiny_corpus, "model.dropout_in=0.3"), tmp_path / "cut", hook=hook)
    resumed = run_search(search_cfg(tiny_corpus, "model.dropout_in=0.3", f"resume={tmp_path / 'cut'}"), tmp_path / "x")
    for key in ("best_ppl", "best_hash", "controller_steps", "shared_steps", "children_evaluated"):
        assert resumed[key] == full[key], key
    a = (tmp_path / "full" / "search_history.jsonl").read_text()
    b = (tmp_path / "cut" / "search_history.jsonl").read_text()
    assert a == b


@pytest.mark.slow
def test_diverging_child_gets_penalty_and_no_nan_weights(tiny_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    import enas_rnn.supernet as sn

    real = sn.evaluate
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        return math.inf if calls["n"] % 3 == 0 else real(*args, **kwargs)

    monkeypatch.setattr(sn, "evaluate", flaky)
    out = tmp_path / "run"
    metrics = run_search(search_cfg(tiny_corpus), out)
    lines = [json.loads(l) for l in (out / "search_history.jsonl").read_text().splitlines()]
    bad = [l for l in lines if l["diverged"]]
    assert bad and all(l["reward"] == pytest.approx(0.0, abs=1e-2) for l in bad)
    assert metrics["diverged_children"] == len(bad)
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dicts"]["model"].values() if v.is_floating_point())


def test_invalid_search_values(tiny_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="num_layers"):
        run_search(search_cfg(tiny_corpus, "model.num_layers=2"), tmp_path / "a")
    with pytest.raises(ConfigError, match="screen.keep"):
        run_search(search_cfg(tiny_corpus, "screen=mrs", "screen.keep=20"), tmp_path / "b")


@pytest.mark.slow
def test_cli_smoke_search_on_real_ptb(ptb_root: Path, tmp_path: Path) -> None:
    """`enas-search experiment=smoke` as a user runs it (CI runs this on real PTB)."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    res = subprocess.run(
        [sys.executable, "-m", "enas_rnn.cli.search", "experiment=smoke", f"data.root={ptb_root}",
         f"hydra.run.dir={tmp_path / 'cli'}"],
        cwd=REPO, capture_output=True, text=True, env=dict(os.environ),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["controller_steps"] == 10 and math.isfinite(metrics["best_ppl"])
    assert Genotype.from_json(tmp_path / "cli" / "best_genotype.json").space == "lstm"


@pytest.mark.slow
def test_best_genotype_file_reproduces_its_derive_perplexity(tiny_corpus: Path, tmp_path: Path) -> None:
    """best_genotype.json is the spelling that was evaluated: on the saved supernet it gives the
    same perplexity as derive reported (a respelling would select other shared weights)."""
    from enas_rnn.train import evaluate, perplexity

    out = tmp_path / "run"
    run_search(search_cfg(tiny_corpus, "search=random"), out)
    model, cfg, splits = load_supernet(out)
    top = json.loads((out / "top_genotypes.json").read_text())
    for entry in top[:3]:
        g = Genotype.from_dict(entry["genotype"])
        ppl = perplexity(evaluate(model, splits.valid, cfg.data.bptt, entry["windows"], 0, genotype=g))
        assert ppl == pytest.approx(entry["ppl"], rel=1e-6)
    assert Genotype.from_json(out / "best_genotype.json") == Genotype.from_dict(top[0]["genotype"])


# ---------------------------------------------------------------------------- search.unbounded
def _watch(monkeypatch) -> tuple[list[Genotype], list[Genotype], list[tuple[list[Genotype], list[float]]]]:
    """Records the children trained in the shared phase, those evaluated, and every strategy update
    (the proposals it scored and their rewards)."""
    import enas_rnn.search as search_mod
    from enas_rnn.search import SearchRun
    from enas_rnn.strategies import ENASStrategy

    trained: list[Genotype] = []
    evaluated: list[Genotype] = []
    updates: list[tuple[list[Genotype], list[float]]] = []
    real_child, real_eval, real_update = SearchRun._training_child, search_mod.evaluate_cells, ENASStrategy.update

    def child(self):
        d = real_child(self)
        trained.append(d["genotype"])
        return d

    def evaluate(model, genotypes, *args, **kwargs):
        evaluated.extend(genotypes)
        return real_eval(model, genotypes, *args, **kwargs)

    def update(self, handle, index, rewards):
        updates.append(([handle.genotypes[i] for i in index], list(rewards)))
        return real_update(self, handle, index, rewards)

    monkeypatch.setattr(SearchRun, "_training_child", child)
    monkeypatch.setattr(search_mod, "evaluate_cells", evaluate)
    monkeypatch.setattr(ENASStrategy, "update", update)
    return trained, evaluated, updates


@pytest.mark.slow
@pytest.mark.parametrize("space,strategy", [("lstm", "enas"), ("lstm", "random"), ("enas", "random"), ("enas", "enas")])
def test_unbounded_mask_never_trains_evaluates_or_derives_an_unbounded_cell(
        tiny_corpus: Path, tmp_path: Path, monkeypatch, space: str, strategy: str) -> None:
    trained, evaluated, _ = _watch(monkeypatch)
    out = tmp_path / "run"
    metrics = run_search(search_cfg(tiny_corpus, f"space={space}", f"search={strategy}", "search.unbounded=mask"), out)
    assert trained and evaluated
    assert not any(g.is_unbounded() or g.is_degenerate() for g in trained + evaluated)
    top = json.loads((out / "top_genotypes.json").read_text())
    assert all(not Genotype.from_dict(t["genotype"]).is_unbounded() for t in top)
    assert all(t["growth"] in ("bounded", "linear") for t in top if "growth" in t)
    assert not Genotype.from_json(out / "best_genotype.json").is_unbounded()
    assert metrics["unbounded_handling"] == "mask" and metrics["children_evaluated"] == 10
    assert metrics["unbounded_evaluated"] == 0 and metrics["unbounded_proposals"] <= metrics["proposals"] - 10
    assert 0 <= metrics["unbounded_share"] < 1 and metrics["unbounded_share_last_epoch"] is not None


@pytest.mark.slow
def test_unbounded_penalty_rewards_without_evaluating(tiny_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    trained, evaluated, updates = _watch(monkeypatch)
    metrics = run_search(search_cfg(tiny_corpus, "search.unbounded=penalty", "search.degenerate_reward=-0.5"),
                         tmp_path / "p")
    penalised = [(g, r) for gs, rs in updates for g, r in zip(gs, rs) if g.is_unbounded()]
    assert penalised and all(r == pytest.approx(-0.5, abs=1e-2) for _, r in penalised)  # (+ the entropy bonus)
    assert not any(g.is_unbounded() for g in evaluated + trained)
    assert metrics["proposals"] - metrics["degenerate_proposals"] >= metrics["children_evaluated"]
    assert metrics["children_evaluated"] + len(penalised) == 10 and metrics["unbounded_proposals"] == len(penalised)


@pytest.mark.slow
def test_unbounded_off_is_todays_search(tiny_corpus: Path, tmp_path: Path) -> None:
    default = run_search(search_cfg(tiny_corpus), tmp_path / "a")
    off = run_search(search_cfg(tiny_corpus, "search.unbounded=off"), tmp_path / "b")
    for key in ("best_ppl", "best_hash", "proposals", "degenerate_proposals", "children_evaluated"):
        assert off[key] == default[key], key
    assert (tmp_path / "a" / "search_history.jsonl").read_text() == (tmp_path / "b" / "search_history.jsonl").read_text()
    lines = [json.loads(l) for l in (tmp_path / "b" / "search_history.jsonl").read_text().splitlines()]
    # unbounded cells are evaluated, and counted
    assert off["unbounded_handling"] == "off" and off["unbounded_evaluated"] == sum(l["unbounded"] for l in lines) > 0
    assert off["unbounded_proposals"] >= off["unbounded_evaluated"]
    with pytest.raises(ConfigError, match="search.unbounded='maybe': valid values are one of mask, penalty, off"):
        run_search(search_cfg(tiny_corpus, "search.unbounded=maybe"), tmp_path / "c")
    with pytest.raises(ConfigError, match="space.template='memory': valid values for the enas space are none"):
        run_search(search_cfg(tiny_corpus, "space=enas", "space.template=memory"), tmp_path / "d")


@pytest.mark.slow
def test_search_in_the_memory_template(tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "t"
    run_search(search_cfg(tiny_corpus, "space.template=memory", "search.unbounded=mask"), out)
    best = Genotype.from_json(out / "best_genotype.json")
    assert best.outputs["c"] == "n3" and best.nodes[2].to_dict()["op"] == "add" and not best.is_unbounded()


@pytest.mark.slow
def test_search_in_the_gates_template(tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "g"
    run_search(search_cfg(tiny_corpus, "space.template=gates"), out)
    best = Genotype.from_json(out / "best_genotype.json")
    sp = make_space("lstm", 8, "gates")  # the best cell is saved canonical; it still fits the template
    assert sp.decode(sp.encode(best)).canonical() == best.canonical() and best.analysis().growth == "linear"


@pytest.mark.slow
def test_an_interrupt_mid_epoch_checkpoints_there_and_resumes_to_the_same_search(tiny_corpus: Path,
                                                                                tmp_path: Path) -> None:
    """SIGTERM between two steps of an epoch (here: requested from a hook) saves that very point; resume=
    continues there and ends with the uninterrupted search's numbers and history."""
    from enas_rnn import interrupt
    from enas_rnn.checkpoint import load_checkpoint

    full = run_search(search_cfg(tiny_corpus, "model.dropout_in=0.3"), tmp_path / "full")
    for event, at in (("controller_step", 7), ("shared_step", 14)):
        cut = tmp_path / f"cut_{event}"

        def hook(e: str, n: int) -> None:
            if e == event and n == at:
                interrupt.request("SIGTERM")

        try:
            with pytest.raises(interrupt.Interrupted, match="interrupted at step"):
                run_search(search_cfg(tiny_corpus, "model.dropout_in=0.3"), cut, hook=hook)
        finally:
            interrupt.reset()
        state = load_checkpoint(cut / "checkpoints" / "last.pt")["search"]
        assert state["controller_done"] > 0 or state["shared_done"] > 0  # a mid-epoch checkpoint
        resumed = run_search(search_cfg(tiny_corpus, "model.dropout_in=0.3", f"resume={cut}"), tmp_path / "x")
        for key in ("best_ppl", "best_hash", "controller_steps", "shared_steps", "children_evaluated",
                    "exploding_windows", "shared_windows"):
            assert resumed[key] == full[key], (event, key)
        assert (tmp_path / "full" / "search_history.jsonl").read_text() == (cut / "search_history.jsonl").read_text()


@pytest.mark.slow
def test_skip_exploding_refuses_the_update_of_an_exploding_window(tiny_corpus: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """With search.skip_exploding a window worse than a uniform guess changes no shared weight."""
    from enas_rnn.train import LoopState, train_steps

    cfg = search_cfg(tiny_corpus, "search.skip_exploding=true")
    run = SearchRun(cfg, tmp_path / "r")
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    state = LoopState(lr=1.0)
    train_steps(run.model, run.optimizer, run.splits.train, state, cfg.train, cfg.data, 3,
                run._training_child, skip_above=-1.0)  # every loss is above -1: every update refused
    assert state.refused == 3 and state.skipped == 0 and state.step == 3
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    metrics = run_search(cfg, tmp_path / "s")
    assert metrics["refused_shared_steps"] <= metrics["exploding_windows"]  # refused: 10x a uniform guess


def test_skip_exploding_trains_an_untrained_supernet() -> None:
    # An untrained supernet predicts about uniformly (loss ~ ln V, often just above): that must train.
    from enas_rnn.search import refusal_threshold

    for vocab in (50, 10_000):
        assert refusal_threshold(vocab) > math.log(vocab) + 2.0  # ln 10 = 2.3 above a uniform guess
        assert refusal_threshold(vocab) == pytest.approx(math.log(10 * vocab))
