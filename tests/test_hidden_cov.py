"""Hidden covariance (enas_rnn.scores.hidden_cov) against a hand-worked example and against the
authors' computation (Serianni & Kalita 2023, training-free-nas ``hidden_scores``/``jacobian_score``)
transcribed step by step in numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import enas_rnn.scores.hidden_cov as hc
from enas_rnn.genotype import get_named
from enas_rnn.scores.hidden_cov import (
    HIDDEN_COV_K,
    HiddenCovConfig,
    hidden_correlation,
    hidden_cov_from_corr,
    hidden_cov_score,
)
from enas_rnn.scores.lm import LMSpec, build_scoring_lm, draw_seed, init_

K = HIDDEN_COV_K


def f(lam: float) -> float:
    """One eigenvalue's term: log(lambda + k) + 1 / (lambda + k)."""
    return math.log(lam + K) + 1.0 / (lam + K)


def authors_score(step_states: list[np.ndarray], k: float = K) -> float:
    """The authors' pipeline on a list of per-step states [B, H] (the order ``CustomRNNCell`` records them).

    dstack -> [B, H, T]; units first -> [H, B, T] -> [H, B*T]; np.corrcoef; general eigensolver;
    -sum(log(v + k) + 1 / (v + k)).
    """
    stacked = np.dstack(step_states)  # [B, H, T]
    per_unit = np.transpose(stacked, (1, 0, 2)).reshape(stacked.shape[1], -1)  # [H, B*T]
    corr = np.corrcoef(per_unit)
    eig = np.linalg.eig(corr)[0]
    assert np.abs(np.imag(eig)).max() < 1e-9  # symmetric input: real up to round-off
    v = np.real(eig)
    return float(-np.sum(np.log(v + k) + 1.0 / (v + k)))


def ours(states: torch.Tensor) -> float:
    corr, constant = hidden_correlation(states)
    assert constant == 0
    return hidden_cov_from_corr(corr, K)


# ------------------------------------------------------------------------------ hand-worked example


def test_three_units_by_hand() -> None:
    """Four samples of three units, worked out on paper.

    u1 = (1, -1, 1, -1), u2 = (1, 1, -1, -1), u3 = (3, -1, -1, -1): all have mean 0, so each
    covariance is u.v / 3. |u1|^2 = |u2|^2 = 4, |u3|^2 = 12, u1.u2 = 0, u1.u3 = u2.u3 = 4, hence
    corr(u1, u2) = 0 and corr(u1, u3) = corr(u2, u3) = 4 / sqrt(4 * 12) = 1/sqrt(3) =: b.
    C = [[1, 0, b], [0, 1, b], [b, b, 1]]: (1, -1, 0) is an eigenvector with eigenvalue 1; on
    span{(1, 1, 0)/sqrt(2), (0, 0, 1)} C acts as [[1, sqrt(2) b], [sqrt(2) b, 1]], eigenvalues
    1 +- sqrt(2) b = 1 +- sqrt(2/3). Score = -(f(1 - sqrt(2/3)) + f(1) + f(1 + sqrt(2/3))).
    """
    u = torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [3.0, -1.0, -1.0, -1.0]])  # [H, N]
    states = u.T.reshape(2, 2, 3)  # [T, B, H]: sample n = (t, b) with n = 2 t + b
    b = 1.0 / math.sqrt(3.0)
    expected_corr = torch.tensor([[1.0, 0.0, b], [0.0, 1.0, b], [b, b, 1.0]], dtype=torch.float64)

    corr, constant = hidden_correlation(states)
    assert constant == 0
    assert torch.allclose(corr, expected_corr, atol=1e-15)
    lam = np.linalg.eigvalsh(corr.numpy())
    s = math.sqrt(2.0 / 3.0)
    assert lam == pytest.approx([1 - s, 1.0, 1 + s], abs=1e-14)
    expected = -(f(1 - s) + f(1.0) + f(1 + s))
    assert hidden_cov_from_corr(corr, K) == pytest.approx(expected, rel=1e-12)
    # The authors' computation agrees on the same numbers (T = 2 steps of [B = 2, H = 3]).
    assert authors_score([states[t].numpy() for t in range(2)]) == pytest.approx(expected, rel=1e-12)


def test_redundant_unit_by_hand() -> None:
    """u3 = u1 + u2 (a copy of information): corr(u1, u3) = corr(u2, u3) = 1/sqrt(2), eigenvalues
    0, 1, 2 (the zero is the redundancy), so the score pays 1/k for it."""
    u = torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [2.0, 0.0, 0.0, -2.0]])
    corr, _ = hidden_correlation(u.T.reshape(4, 1, 3))
    a = 1.0 / math.sqrt(2.0)
    assert torch.allclose(corr, torch.tensor([[1.0, 0.0, a], [0.0, 1.0, a], [a, a, 1.0]], dtype=torch.float64))
    expected = -(f(0.0) + f(1.0) + f(2.0))
    assert hidden_cov_from_corr(corr, K) == pytest.approx(expected, rel=1e-9)
    assert expected < -0.999e5  # the zero eigenvalue dominates: 1/k - log(1/k)


# ------------------------------------------------------------------------------ vs the authors' code


@pytest.mark.parametrize("t, b, h", [(9, 6, 5), (7, 4, 12), (3, 2, 10)])  # full rank; B*T near H; H > B*T
def test_equals_authors_transcription_on_random_states(t: int, b: int, h: int) -> None:
    g = torch.Generator().manual_seed(t * 100 + h)
    mix = torch.randn(h, h, generator=g)
    states = torch.tanh(torch.randn(t, b, h, generator=g) @ mix)  # correlated units in (-1, 1)
    states[0] = 0.0  # h_0 = 0, as in both pipelines
    theirs = authors_score([states[i].numpy() for i in range(t)])
    assert ours(states) == pytest.approx(theirs, rel=1e-7)


def test_constant_units_are_flagged_exactly() -> None:
    g = torch.Generator().manual_seed(0)
    states = torch.randn(7, 1, 4, generator=g, dtype=torch.float64)
    states[..., 1] = 0.1  # mean subtraction leaves a round-off residue for 7 copies of 0.1
    residue = states[..., 1].reshape(-1) - states[..., 1].mean()
    assert residue.abs().max() > 0  # so a zero-variance test (np.corrcoef) would miss it
    corr, constant = hidden_correlation(states)
    assert constant == 1
    assert torch.isnan(corr[1]).all() and torch.isnan(corr[:, 1]).all() and not torch.isnan(corr[0, 2])
    assert math.isnan(hidden_cov_from_corr(corr, K))


# ------------------------------------------------------------------------------ the whole score


def test_score_uses_the_states_fed_into_each_input_step() -> None:
    """hidden_cov_score on a [T+1, B] slice = the authors' formula on h_0 = 0, h_1 .. h_{T-1},
    where h_t is the cell's state after the first t input rows (computed here one prefix at a time)."""
    vocab, emb, hid = 30, 8, 8
    data = torch.randint(0, vocab, (7, 3), generator=torch.Generator().manual_seed(1))  # [T+1, B]
    genotype = get_named("lstm")
    res = hidden_cov_score(genotype, data, vocab, HiddenCovConfig(seed=4), emb, hid)
    steps = data.size(0) - 1
    assert res.n_samples == steps * data.size(1) and res.constant_units == 0

    spec = LMSpec(vocab, emb, hid)
    model = build_scoring_lm(genotype, spec, None)
    with torch.no_grad():
        init_(model, None, draw_seed(4, 0, 0), lm_part=True)
        cell = model.cores[0]
        init_(cell, None, draw_seed(4, 0, 1), lm_part=False)
        x = model.embedding(data)
        fed = [torch.zeros(data.size(1), hid)]
        for t in range(1, steps):
            _, (h_t, _) = cell(x[:t], cell.init_hidden(data.size(1)))  # state after t inputs
            fed.append(h_t)
    states = [s.numpy() for s in fed]
    assert res.score == pytest.approx(authors_score(states), abs=score_tolerance(states))


def score_tolerance(step_states: list[np.ndarray], k: float = K) -> float:
    """How far two float32 computations of the same states may move the score: the states agree to a few
    float32 ulps (the two paths sum the same products in another order), which moves each correlation
    entry by about 2 eps and each eigenvalue by at most H times that; the score's derivative in an
    eigenvalue is 1/(v+k) - 1/(v+k)^2, large where v is near 0 (near-collinear units)."""
    stacked = np.dstack(step_states)
    per_unit = np.transpose(stacked, (1, 0, 2)).reshape(stacked.shape[1], -1)
    v = np.linalg.eigvalsh(np.corrcoef(per_unit))
    delta = 2 * float(np.finfo(np.float32).eps) * per_unit.shape[0]
    return float(np.sum(np.abs(1.0 / (v + k) - 1.0 / (v + k) ** 2)) * delta)


def test_score_is_nan_with_a_dead_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit that stays 0 makes the correlation undefined: NaN (theirs: the whole row NaN)."""
    real = hc.hidden_correlation

    def kill_unit(states: torch.Tensor) -> tuple[torch.Tensor, int]:
        states = states.clone()
        states[..., 0] = 0.0
        return real(states)

    monkeypatch.setattr(hc, "hidden_correlation", kill_unit)
    data = torch.randint(0, 30, (6, 2), generator=torch.Generator().manual_seed(0))
    res = hidden_cov_score(get_named("lstm"), data, 30, HiddenCovConfig(seed=0), 8, 8)
    assert math.isnan(res.score) and res.constant_units == 1
