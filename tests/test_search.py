"""enas-search end to end on a tiny corpus: outputs, both spaces and strategies, faults, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import compose_app

from enas_rnn.searchrun import run_search
from enas_rnn.supernet import load_supernet
from enas_rnn.errors import ConfigError
from enas_rnn.genotype import Genotype


def search_cfg(root: Path, *extra: str):
    return compose_app("search", ["experiment=smoke", f"data.root={root}", "train.progress=false", *extra])


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


def test_penalty_mode_penalises_without_evaluating(tiny_corpus: Path, tmp_path: Path) -> None:
    metrics = run_search(search_cfg(tiny_corpus, "search.degenerate=penalty"), tmp_path / "p")
    assert metrics["proposals"] == 10 and metrics["degenerate_proposals"] > 0
    assert metrics["children_evaluated"] + metrics["degenerate_proposals"] == 10


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


def test_cli_smoke_search_on_real_ptb(ptb_root: Path, tmp_path: Path) -> None:
    """`enas-search experiment=smoke` as a user runs it (CI runs this on real PTB)."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    res = subprocess.run(
        [sys.executable, "-m", "enas_rnn.cli.search", "experiment=smoke", f"data.root={ptb_root}",
         f"hydra.run.dir={tmp_path / 'cli'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert metrics["controller_steps"] == 10 and math.isfinite(metrics["best_ppl"])
    assert Genotype.from_json(tmp_path / "cli" / "best_genotype.json").space == "lstm"


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
