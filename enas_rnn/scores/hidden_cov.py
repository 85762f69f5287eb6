"""Hidden covariance (Serianni & Kalita, ACL 2023): a training-free score of a cell from the
correlation of its hidden states at initialisation.

Serianni & Kalita, "Training-free Neural Architecture Search for RNNs and Transformers" (ACL 2023,
arXiv:2306.00288); code github.com/aaronserianni/training-free-nas (read at commit 2d76e01),
``RNN_metrics.ipynb``: ``run_scores`` builds and runs the network, ``CustomRNNCell.forward`` records
the states, ``hidden_scores`` + ``jacobian_score`` compute the number. Their pipeline, step by step:

  1. network: NAS-Bench-NLP's AWD-RNN (fmsnew/nas-bench-nlp-release ``main_one_model_train.py``:
     3 recurrent layers, embedding 400, hidden 600, last layer 400 because weights are tied) built
     after ``torch.manual_seed(0)``: every cell parameter U(-1/sqrt(H), 1/sqrt(H)), embedding
     U(-0.1, 0.1); ``network.eval()`` (dropouts off);
  2. data: the first minibatch of the PTB *test* stream batchified with ``eval_batch_size`` 50:
     inputs [T=70 (bptt), B=50], zero initial states;
  3. states: each call of the cell appends the state it is *given*, ``hidden_tuple[0]`` [B, H] -
     h_0 = 0, h_1, ..., h_{T-1} - to a global list; ``hidden_scores`` takes list[:70] (layer 1) and
     list[70:140] (layer 2) of the first forward pass and list[-70:] (layer 3 of the last pass,
     same input and weights) and stacks each with ``torch.dstack`` into [B, H, T];
  4. ``jacobian_score``: transpose to [H, B, T], reshape to [H, B*T] (one row per unit, one column
     per (example, step)); C = ``np.corrcoef`` [H, H] (float64, clipped to [-1, 1]);
     lambda = ``np.linalg.eig(C)``; score = -sum_i [log(lambda_i + k) + 1/(lambda_i + k)],
     k = 1e-5 (the Jacobian-covariance formula of Mellor et al., arXiv:2006.04647v1, 2020,
     applied to hidden states). Higher
     is better: log x + 1/x is smallest at x = 1, so uncorrelated units (C = I) give the best
     value, -H (1 + O(k)); correlated or redundant units (eigenvalues far from 1, near 0) lower it;
  5. NaN: a unit that is exactly constant makes ``np.corrcoef`` NaN, ``np.linalg.eig`` then raises,
     and the notebook's ``except`` writes NaN for every score of that architecture.

Ours (``hidden_cov_score``): steps 3-5 are the same computation - states h_0 = 0, h_1 .. h_{T-1}
fed into each step, one row per unit over the B*T (step, example) columns (column order does not
change a correlation), Pearson correlation in float64 clipped to [-1, 1], the same formula and k.
The tests check it against a hand-worked 3-unit example and against a line-by-line numpy
transcription of ``hidden_scores``/``jacobian_score``. Differences, each deliberate unless marked:

* network: one recurrent layer (our cell in the scoring LM, the search's sizes), so our score is
  their "Layer 1 Hidden Covariance"; theirs also reports layers 2 and 3 of a 3-layer stack.
* cells: our FixedCell clamps operands at ``state_clip`` (25, the ENAS guard the cell is trained
  with); their CustomRNN cells have no clamp. Identical whenever no state reaches 25.
* init: same distributions (cell U(-1/sqrt(H), 1/sqrt(H)) - FixedCell's default - embedding
  U(-0.1, 0.1)), but drawn from our own seeded streams (``draw_seed``), not torch's global RNG
  after ``manual_seed(0)``, so the numbers differ draw by draw; with ``init_range`` set the cell is
  U(-init_range, init_range), the model's own init.
* data: the caller's fixed slice [T+1, B] of the *validation* stream (screener: ``screen.bptt`` +
  1 rows x ``screen.batch``; enas-mrs: ``score_bptt``/``score_batch``), whose first T rows are
  the inputs - the slice MRS also scores (rows 1..T are its targets). The test split stays unseen.
  *Fixed here:* we used to run all T+1 rows and keep T+1 states; now the cell runs the T input
  rows, as their [bptt, B] minibatch, giving exactly B*T samples.
* eigenvalues: C is symmetric, so ``eigvalsh`` (real, ascending) instead of the general ``eig``
  (which can return complex-typed values); round-off negatives are clipped to 0 (``eig``'s tiny
  negatives stay, and would make log(lambda + k) NaN only below -k). Equal up to round-off.
* NaN: a constant unit gives ``score = nan`` for this score only (``constant_units`` says how many);
  the screener ranks it last. Constants are found exactly (max == min per unit). numpy's corrcoef
  only returns NaN when mean subtraction leaves exactly zero: a non-zero constant (say 0.1 in
  every column) leaves a round-off residue and is silently treated as an uncorrelated unit. Inside
  the score this cannot differ (h_0 = 0 is a column, so a constant unit is exactly 0), but
  ``hidden_correlation`` on arbitrary states now flags such units too (*fixed here*; it used the
  same zero-variance test as numpy).
* not implemented: their "Hidden Synaptic Saliency" (sum |h * dy/dh|), computed in the same
  ``hidden_scores``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from enas_rnn.scores.lm import (
    LMSpec,
    ScoreCache,
    build_scoring_lm,
    check_tokens,
    data_fingerprint,
    draw_seed,
    init_,
)
from enas_rnn.rules import POSITIVE, rule
from enas_rnn.scores.registry import register_score

__all__ = ["HIDDEN_COV_K", "HiddenCovConfig", "HiddenCovResult", "hidden_correlation", "hidden_cov_from_corr",
           "hidden_cov_score", "HiddenCovScore"]

#: Jitter k of the eigenvalue score (authors' value).
HIDDEN_COV_K: float = 1e-5


@dataclass
class HiddenCovConfig:
    """Settings of the hidden-covariance score (a Hydra structured config)."""

    seed: int = 0  # seed of the initialisation draw
    k: float = rule(HIDDEN_COV_K, POSITIVE)  # jitter added to the eigenvalues (Serianni & Kalita: 1e-5)


@dataclass(frozen=True)
class HiddenCovResult:
    """Outcome of one hidden-covariance evaluation; ``score`` is higher-is-better (nan if undefined)."""

    score: float
    n_units: int  # H
    n_samples: int  # B * T columns of the data matrix
    constant_units: int  # units with zero variance (score undefined when > 0)
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def hidden_cov_from_corr(corr: Tensor | np.ndarray, k: float = HIDDEN_COV_K) -> float:
    """-sum_i [log(lambda_i + k) + 1/(lambda_i + k)] over the eigenvalues of a correlation matrix."""
    c = torch.as_tensor(np.asarray(corr), dtype=torch.float64)
    if c.dim() != 2 or c.size(0) != c.size(1):
        raise ValueError(f"need a square correlation matrix, got shape {tuple(c.shape)}")
    if not bool(torch.isfinite(c).all()):
        return math.nan
    lam = torch.linalg.eigvalsh(0.5 * (c + c.T)).clamp(min=0.0) + k  # symmetric: real eigenvalues
    return float(-(lam.log() + lam.reciprocal()).sum())


def hidden_correlation(states: Tensor) -> tuple[Tensor, int]:
    """Pearson correlation [H, H] of hidden units over samples, and the number of constant units.

    ``states`` [N, ..., H]: every leading index is one sample (e.g. [T, B, H]). A unit is constant
    when its max equals its min (exact, unlike a zero-variance test after mean subtraction, which
    round-off can miss); its row and column are NaN.
    """
    h = states.size(-1)
    x = states.reshape(-1, h).double()  # [N, H]: one row per (step, example)
    constant_mask = x.amax(0) == x.amin(0)  # [H]
    x = x - x.mean(0, keepdim=True)
    cov = x.T @ x / max(x.size(0) - 1, 1)  # [H, H]
    sd = cov.diagonal().sqrt()
    corr = (cov / (sd[:, None] * sd[None, :])).clamp(-1.0, 1.0)
    nan = constant_mask[:, None] | constant_mask[None, :]
    corr = corr.masked_fill(nan, math.nan)  # np.corrcoef gives NaN here (0/0) when the residue is 0
    return corr, int(constant_mask.sum())


def hidden_cov_score(
    genotype: Any,
    data: Tensor,
    vocab_size: int,
    cfg: HiddenCovConfig | None = None,
    emb_size: int = 200,
    hidden_size: int = 200,
    tracker: Any = None,
    *,
    tie_weights: bool = True,
    state_clip: Optional[float] = 25.0,
    init_range: Optional[float] = None,
    cache: ScoreCache | None = None,
) -> HiddenCovResult:
    """Hidden-covariance score (Serianni & Kalita 2023) of a cell on the token slice ``data`` [T+1, B].

    The cell runs the T input rows ``data[:-1]`` (the rows MRS predicts from) from zero states;
    the score uses the B*T states fed into those steps, h_0 = 0 .. h_{T-1}. Same calling convention as :func:`mrs_score_genotype` (``tracker`` is unused; ``cfg`` is a
    :class:`HiddenCovConfig`, or anything with ``seed``). Only the embedding and the cell matter
    (the decoder never touches the hidden states), so the decoder is not run.
    """
    seed = int(getattr(cfg, "seed", 0)) if cfg is not None else 0
    k = float(getattr(cfg, "k", HIDDEN_COV_K)) if cfg is not None else HIDDEN_COV_K
    check_tokens(data, vocab_size)
    spec = LMSpec(int(vocab_size), int(emb_size), int(hidden_size), bool(tie_weights), state_clip, init_range)
    key = None
    if cache is not None:
        key = ("hidden_cov", genotype.hash(), spec, data_fingerprint(data), seed, k)
        got = cache.get(key)
        if got is not None:
            return got
    start = time.perf_counter()
    model = build_scoring_lm(genotype, spec, cache).to(data.device)
    with torch.no_grad():
        init_(model, spec.init_range, draw_seed(seed, 0, 0), lm_part=True)
        cell = model.cores[0]
        init_(cell, spec.init_range, draw_seed(seed, 0, 1), lm_part=False)
        x = model.embedding(data[:-1])  # [T, B, E]: the input rows (the last row is a target)
        out, _ = cell(x, cell.init_hidden(data.size(1)))  # [T, B, H]: h_1 .. h_T
        # States fed into each step, as the authors record them: h_0 = 0, h_1 .. h_{T-1}.
        states = torch.cat([torch.zeros_like(out[:1]), out[:-1]], 0)  # [T, B, H]
        corr, constant = hidden_correlation(states)
        score = hidden_cov_from_corr(corr, k) if constant == 0 else math.nan
    res = HiddenCovResult(score, int(hidden_size), int(states.shape[0] * states.shape[1]), constant,
                          time.perf_counter() - start)
    if cache is not None:
        cache.put(key, res)
    return res


@register_score("hidden_cov")
class HiddenCovScore:
    """Hidden covariance of each candidate cell (same construction and call as every cell score)."""

    def __init__(self, spec: LMSpec, cfg: Any, cache: ScoreCache | None = None, pool: int = 0) -> None:
        self.spec, self.cfg, self.cache = spec, cfg, cache

    def __call__(self, genotypes: Sequence[Any], data: Tensor) -> list[HiddenCovResult]:
        s = self.spec
        return [hidden_cov_score(g, data, s.vocab_size, self.cfg, s.emb_size, s.hidden_size, tie_weights=s.tie_weights,
                                 state_clip=s.state_clip, init_range=s.init_range, cache=self.cache)
                for g in genotypes]

