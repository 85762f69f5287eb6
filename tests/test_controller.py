"""The controller samples valid cells, scores them consistently, and REINFORCE really learns."""

from __future__ import annotations

import functools

import pytest
import torch

from enas_rnn.controller import Controller, ControllerConfig
from enas_rnn.spaces import make_space
from enas_rnn.strategies import (
    ENASStrategy,
    RandomStrategy,
    ReinforceConfig,
    top_k_indices,
)


@pytest.mark.parametrize("space_name", ["lstm", "enas"])
def test_sample_is_valid_and_log_prob_recomputes(space_name: str) -> None:
    torch.manual_seed(0)
    space = make_space(space_name, 6)
    ctrl = Controller(space, ControllerConfig(hidden_size=16))
    s = ctrl.sample(8)
    assert len(s.genotypes) == 8 and s.log_prob.shape == (8,) and s.entropy.shape == (8,)
    assert (s.log_prob < 0).all() and (s.entropy > 0).all()
    lp, ent = ctrl.log_prob(s.genotypes)
    torch.testing.assert_close(lp, s.log_prob, rtol=0, atol=1e-5)
    torch.testing.assert_close(ent, s.entropy, rtol=0, atol=1e-5)


def test_sampling_is_seeded() -> None:
    space = make_space("lstm", 5)
    torch.manual_seed(1)
    ctrl = Controller(space)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = ctrl.sample(4, g1), ctrl.sample(4, g2)
    assert [g.hash() for g in a.genotypes] == [g.hash() for g in b.genotypes]


def _tanh_share(g) -> float:
    acts = [a for node in g.to_dict()["nodes"] for a in _acts(node)]
    return sum(a == "tanh" for a in acts) / len(acts)


def _acts(node: dict) -> list[str]:
    if "inputs" in node:
        return [act for _, act in node["inputs"]]
    return [node["act"]]


@pytest.mark.slow
@pytest.mark.parametrize("space_name", ["lstm", "enas"])
def test_reinforce_learns_a_toy_reward(space_name: str) -> None:
    """Reward = share of tanh activations: uniform sampling gives ~0.25; the policy must climb."""
    torch.manual_seed(0)
    space = make_space(space_name, 4)
    cfg = ReinforceConfig(controller_lr=0.02, entropy_weight=0.0, baseline_decay=0.9)
    strat = ENASStrategy(Controller(space, ControllerConfig(hidden_size=32)), cfg, torch.Generator().manual_seed(0))

    def mean_share(n: int = 64) -> float:
        with torch.no_grad():
            gs, _, _ = strat.propose(n)
        return sum(map(_tanh_share, gs)) / n

    start = mean_share()
    for _ in range(150):
        gs, handle, _ = strat.propose(8)
        strat.update(handle, list(range(8)), [_tanh_share(g) for g in gs])
    end = mean_share()
    assert start < 0.45 and end > 0.7, (start, end)


def test_random_strategy_does_not_learn_and_is_seeded() -> None:
    space = make_space("enas", 5)
    a = RandomStrategy(space, torch.Generator().manual_seed(0)).propose(5)[0]
    b = RandomStrategy(space, torch.Generator().manual_seed(0)).propose(5)[0]
    assert [g.hash() for g in a] == [g.hash() for g in b]
    stats = RandomStrategy(space, torch.Generator()).update(None, [0, 1], [0.5, 0.25])
    assert stats.advantages == [0.0, 0.0] and stats.loss == 0.0


@pytest.mark.parametrize("strategy", ["enas", "random"])
def test_accept_restricts_proposals_and_counts_rejections(strategy: str) -> None:
    space = make_space("lstm", 4)
    gen = torch.Generator().manual_seed(0)
    strat = (ENASStrategy(Controller(space), ReinforceConfig(), gen) if strategy == "enas"
             else RandomStrategy(space, gen))

    def accept(g) -> bool:
        return not g.is_degenerate()

    gs, handle, rejected = strat.propose(12, accept)
    assert len(gs) == 12 and all(accept(g) for g in gs) and rejected > 0  # a 4-node space is mostly degenerate
    if strategy == "enas":
        assert handle.log_prob.shape == (12,) and handle.genotypes == gs
        strat.update(handle, list(range(12)), [1.0] * 12)  # the merged batch is differentiable
    g, _ = strat.sample_for_training(accept)
    assert accept(g)


def test_top_k_keeps_exactly_the_best() -> None:
    scores = [0.1, 5.0, -2.0, 5.0, float("nan"), 3.0]
    assert top_k_indices(scores, 2) == [1, 3]
    assert top_k_indices(scores, 3) == [1, 3, 5]
    assert top_k_indices(scores, 6) == [0, 1, 2, 3, 4, 5]
    assert len(top_k_indices(scores, 1)) == 1


def test_constrained_decoding_samples_only_valid_cells_with_the_masked_policy() -> None:
    space = make_space("lstm", 8)
    controller = Controller(space, ControllerConfig(hidden_size=16))

    def constraint(prefix):
        return space.allowed(prefix, True)

    sample = controller.sample(200, torch.Generator().manual_seed(0), constraint)
    bad = sum(g.is_degenerate() for g in sample.genotypes)
    assert bad <= 30  # only node prefixes with no valid output pair (about 4 %) can still come out degenerate
    free = controller.sample(200, torch.Generator().manual_seed(0))
    assert sum(g.is_degenerate() for g in free.genotypes) > 60  # about 47 % without the mask
    # The log-probability is the masked policy's: scoring the samples again under the mask gives the same.
    lp, _ = controller.log_prob(sample.genotypes[:20], constraint)
    torch.testing.assert_close(lp, sample.log_prob[:20])
    assert torch.isfinite(sample.entropy).all()


@pytest.mark.parametrize("space", ["lstm", "enas"])
def test_draw_gives_the_cells_sample_gives_from_the_same_rng(space: str) -> None:
    # The shared phase's cheap draw (no graph, no statistics) must not change which cells a seed gives.
    sp = make_space(space, 6)
    ctl = Controller(sp)
    for constraint in (None, functools.partial(sp.allowed, require_memory=True)):
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        for _ in range(20):
            assert ctl.draw(g1, constraint) == ctl.sample(1, g2, constraint).genotypes[0]
