"""MRS for language models (enas_rnn.scores.lm): LM errors and their bounds, seeded genotype scoring,
the cache, and the hidden-covariance competitor on hand-checkable cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import enas_rnn.scores.lm as mrs
from enas_rnn.genotype import Genotype, get_named
from enas_rnn.scores import SCORES
from enas_rnn.scores.hidden_cov import (
    HiddenCovConfig,
    HiddenCovScore,
    hidden_correlation,
    hidden_cov_from_corr,
    hidden_cov_score,
)
from enas_rnn.scores.lm import CE_CAP_FACTOR, MRSScore, lm_error_hi, mrs_score_genotype
from enas_rnn.scores.lm import ScoreCache as MRSCache
from enas_rnn.scores.mrs import ERRORS, MRSConfig, ThresholdTracker
from enas_rnn.spaces import make_space

V, E, H = 50, 16, 16


@pytest.fixture
def tokens() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, V, (13, 4), generator=g)  # [T + 1, B]


def cfg(**kw) -> MRSConfig:
    base = dict(samples=5, error="ce", threshold_mode="quantile", quantile=0.2, seed=3)
    base.update(kw)
    return MRSConfig(**base)


def swapped_lstm() -> Genotype:
    """The named LSTM spelled differently (operands of commutative nodes swapped): same cell."""
    d = get_named("lstm").to_dict()
    d.pop("name", None)
    for node in d["nodes"]:
        node["inputs"] = node["inputs"][::-1]
    return Genotype.from_dict(d)


# ------------------------------------------------------------------------------ LM errors


def test_ce_and_softmax_mae_match_direct_formulas_and_bounds() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 3, V, generator=g) * 3
    tgt = torch.randint(0, V, (6, 3), generator=g)
    p = torch.softmax(logits.double(), -1)
    onehot = torch.nn.functional.one_hot(tgt, V).double()
    direct_mae = float((p - onehot).abs().mean())  # mean over tokens and vocabulary
    assert ERRORS["softmax_mae"].fn(logits, tgt) == pytest.approx(direct_mae, rel=1e-9)
    ce = ERRORS["ce"].fn(logits, tgt)
    assert ce == pytest.approx(float(torch.nn.functional.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))), rel=1e-6)
    # Bounds: a hopeless prediction (target logit far below the rest) reaches them.
    bad = torch.zeros(2, 2, V)
    bad[..., 0] = 1e4
    tgt1 = torch.ones(2, 2, dtype=torch.long)
    assert ERRORS["ce"].fn(bad, tgt1) == pytest.approx(CE_CAP_FACTOR * math.log(V)) == lm_error_hi("ce", V)
    assert ERRORS["softmax_mae"].fn(bad, tgt1) == pytest.approx(2.0 / V) == lm_error_hi("softmax_mae", V)


# ------------------------------------------------------------------------------ genotype scoring


def test_genotype_score_is_seeded_and_pure(tokens: torch.Tensor) -> None:
    g = get_named("lstm")
    before = torch.get_rng_state()
    a = mrs_score_genotype(g, tokens, V, cfg(), E, H)
    b = mrs_score_genotype(g, tokens, V, cfg(), E, H)
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is untouched
    assert a.samples == b.samples and a.score == b.score and len(a.samples) == 5
    assert a.samples != mrs_score_genotype(g, tokens, V, cfg(seed=4), E, H).samples
    # Every draw is in the exact range of the error.
    assert all(0.0 <= e <= lm_error_hi("ce", V) for e in a.samples)
    for dist in ("uniform", "init"):
        r = mrs_score_genotype(g, tokens, V, cfg(dist=dist), E, H, tie_weights=False)
        assert all(math.isfinite(e) for e in r.samples)


def test_different_cells_get_different_scores(tokens: torch.Tensor) -> None:
    space = make_space("lstm", 4)
    cells = [get_named("lstm")] + [space.sample(i) for i in range(4)]
    means = {mrs_score_genotype(c, tokens, V, cfg(), E, H).mean for c in cells}
    assert len(means) >= 4


def test_cache_scores_an_equivalent_genotype_once(tokens: torch.Tensor, monkeypatch) -> None:
    calls = {"n": 0}
    real = mrs._randomize_cell_

    def counting(*args, **kwargs):
        calls["n"] += 1  # one per draw of a cell's weights (each followed by its forward pass)
        return real(*args, **kwargs)

    monkeypatch.setattr(mrs, "_randomize_cell_", counting)
    a, b = get_named("lstm"), swapped_lstm()
    assert a.to_dict() != b.to_dict() and a.hash() == b.hash()
    cache = MRSCache()
    tracker = ThresholdTracker(0.2)
    r1 = mrs_score_genotype(a, tokens, V, cfg(), E, H, tracker, cache=cache)
    assert calls["n"] == 5 and cache.misses == 1
    r2 = mrs_score_genotype(b, tokens, V, cfg(), E, H, tracker, cache=cache)
    assert calls["n"] == 5 and cache.hits == 1  # no draw, no forward pass
    assert r2.samples == r1.samples and len(tracker) == 1  # the pool holds distinct cells
    # Another slice, or another error, is another entry.
    mrs_score_genotype(a, tokens[:7], V, cfg(), E, H, cache=cache)
    mrs_score_genotype(a, tokens, V, cfg(error="softmax_mae"), E, H, cache=cache)
    assert calls["n"] == 15 and len(cache) == 3
    # The cached genotype-independent draws change speed, never results.
    assert mrs_score_genotype(a, tokens, V, cfg(), E, H).samples == r1.samples


def test_batched_errors_equal_one_by_one(tokens: torch.Tensor) -> None:
    space = make_space("lstm", 4)
    cells = [space.sample(i) for i in range(4)] + [get_named("lstm")]
    spec = mrs.LMSpec(V, E, H)
    many = mrs.mrs_lm_errors_many(cells + cells[:1], tokens, spec, cfg())
    assert many[-1][0] == many[0][0] and many[-1][2]  # a repeat within the call is computed once
    for g, (errors, _, _) in zip(cells, many):
        single = mrs.mrs_lm_errors(g, tokens, spec, cfg())[0]
        assert errors == pytest.approx(single, rel=1e-5)


def test_absolute_threshold_is_the_papers_and_quantile_is_relative(tokens: torch.Tensor) -> None:
    g = get_named("lstm")
    r = mrs_score_genotype(g, tokens, V, cfg(threshold_mode="absolute", threshold=0.01), E, H)
    assert r.threshold == 0.01 and r.p < 1e-6  # CE never gets near 0.01 nats with random weights
    q = mrs_score_genotype(g, tokens, V, cfg(), E, H)
    assert min(q.samples) <= q.threshold <= max(q.samples) and q.p > 0.01


# ------------------------------------------------------------------------------ hidden covariance


def test_hidden_cov_on_known_correlation_matrices() -> None:
    k = 1e-5
    f = lambda lam: math.log(lam + k) + 1.0 / (lam + k)  # noqa: E731
    assert hidden_cov_from_corr(np.eye(5), k) == pytest.approx(-5 * f(1.0))
    rho = 0.6  # 2 x 2: eigenvalues 1 +- rho
    c = np.array([[1.0, rho], [rho, 1.0]])
    assert hidden_cov_from_corr(c, k) == pytest.approx(-(f(1 + rho) + f(1 - rho)))
    # Uncorrelated units score best: any correlation lowers the score.
    assert hidden_cov_from_corr(c, k) < hidden_cov_from_corr(np.eye(2), k)
    assert math.isnan(hidden_cov_from_corr(np.array([[1.0, np.nan], [np.nan, 1.0]]), k))


def test_hidden_correlation_matches_numpy_and_flags_constant_units() -> None:
    g = torch.Generator().manual_seed(0)
    states = torch.randn(7, 5, 4, generator=g)  # [T, B, H]
    corr, constant = hidden_correlation(states)
    ref = np.corrcoef(states.reshape(-1, 4).numpy().T)
    assert constant == 0 and np.allclose(corr.numpy(), ref, atol=1e-12)
    states[..., 2] = 0.5
    _, constant = hidden_correlation(states)
    assert constant == 1


def test_hidden_cov_score_on_cells(tokens: torch.Tensor) -> None:
    data = torch.randint(0, V, (30, 4), generator=torch.Generator().manual_seed(2))  # 120 samples > H
    g = get_named("lstm")
    a = hidden_cov_score(g, data, V, HiddenCovConfig(seed=1), E, H)
    b = hidden_cov_score(g, data, V, HiddenCovConfig(seed=1), E, H)
    assert a.score == b.score and math.isfinite(a.score) and a.score <= -H * 0.99
    assert a.n_samples == 29 * 4 and a.constant_units == 0  # 29 input rows: the last row is a target
    assert SCORES["hidden_cov"] is HiddenCovScore and SCORES["mrs"] is MRSScore
    cache = MRSCache()
    hidden_cov_score(g, data, V, HiddenCovConfig(seed=1), E, H, cache=cache)
    assert hidden_cov_score(swapped_lstm(), data, V, HiddenCovConfig(seed=1), E, H, cache=cache).score == a.score
    assert cache.hits == 1
