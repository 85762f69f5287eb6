"""Training-free pre-screening inside the search (screen=mrs / screen=hidden_cov)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from conftest import compose_app

import enas_rnn.search as search_mod
from enas_rnn.searchrun import run_search
from enas_rnn.errors import ConfigError
from enas_rnn.genotype import get_named
from enas_rnn.scores import HiddenCovConfig, LMSpec, MRSConfig
from enas_rnn.screen import Screener
from enas_rnn.spaces import make_space
from enas_rnn.strategies import top_k_indices


def search_cfg(root: Path, *extra: str):
    return compose_app("search", ["experiment=smoke", f"data.root={root}", "train.progress=false", *extra])


def recording(monkeypatch) -> list[list[float]]:
    """Wraps make_screener so that every call's candidate scores are recorded."""
    calls: list[list[float]] = []
    real = search_mod.make_screener

    def make(*args, **kwargs):
        screener = real(*args, **kwargs)

        def record(genotypes):
            scores = screener(genotypes)
            calls.append(list(scores))
            return scores

        return record

    monkeypatch.setattr(search_mod, "make_screener", make)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mrs", "hidden_cov"])
def test_screened_search_evaluates_exactly_the_top_k(tiny_corpus: Path, tmp_path: Path, monkeypatch, name: str) -> None:
    calls = recording(monkeypatch)
    out = tmp_path / "run"
    # resample: every proposal is a valid cell, so each step scores exactly 5 candidates
    metrics = run_search(search_cfg(tiny_corpus, f"screen={name}", "screen.candidates=5", "screen.keep=2",
                                    "search.degenerate=resample"), out)
    lines = [json.loads(l) for l in (out / "search_history.jsonl").read_text().splitlines()]
    steps = 2 * 5  # epochs x controller steps
    assert len(calls) == steps and all(len(c) == 5 for c in calls)
    assert len(lines) == metrics["children_evaluated"] == steps * 2
    by_step = defaultdict(list)
    for l in lines:
        by_step[l["step"]].append(l)
    for step, recs in by_step.items():
        scores = calls[step]
        assert len(recs) == 2  # exactly `keep` children evaluated per step
        kept = [scores[i] for i in top_k_indices(scores, 2)]
        assert sorted(r["screen_score"] for r in recs) == sorted(kept)
        best_two = sorted((s for s in scores if not math.isnan(s)), reverse=True)[:2]
        assert sorted(kept, reverse=True) == best_two
        assert {r["screen_rank"] for r in recs} <= {0, 1}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tb,) = (out / "tb").iterdir()  # one run, named after what ran
    assert tb.name == "search-lstm-enas-seed0"
    acc = EventAccumulator(str(tb))
    acc.Reload()
    assert {"screen/score_kept", "screen/score_all"} <= set(acc.Tags()["scalars"])
    assert len(acc.Scalars("screen/score_kept")) == steps


@pytest.mark.slow
def test_degenerate_candidates_are_never_scored(tiny_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    calls = recording(monkeypatch)
    metrics = run_search(search_cfg(tiny_corpus, "screen=mrs", "screen.candidates=6", "screen.keep=1"), tmp_path / "r")
    assert metrics["degenerate_proposals"] > 0  # a 4-node lstm space is mostly degenerate
    assert sum(len(c) for c in calls) == metrics["proposals"] - metrics["degenerate_proposals"]


def test_screener_is_stateless_and_caches_duplicates() -> None:
    V = 40
    data = torch.randint(0, V, (9, 3), generator=torch.Generator().manual_seed(0))
    spec = LMSpec(V, 16, 16)
    cfg = MRSConfig(samples=3, error="ce", threshold_mode="quantile", quantile=0.1)
    space = make_space("lstm", 4)
    cells = [get_named("lstm")] + [space.sample(i) for i in range(3)] + [get_named("lstm")]
    s = Screener("mrs", data, spec, cfg)
    first = s(cells)
    assert first[0] == first[-1] and s.cache.misses == 4  # the repeat is scored once
    assert s(cells) == first  # pool=0: the same candidates get the same scores every step
    assert s.cache.hits == 5 and s.cache.misses == 4  # every candidate of the second step is a hit
    pooled = Screener("mrs", data, spec, cfg, pool=10)
    pooled(cells)
    assert len(pooled.score.tracker) == 4  # distinct cells only
    with pytest.raises(ConfigError, match="valid scores: hidden_cov, mrs"):
        Screener("nope", data, spec, HiddenCovConfig())
