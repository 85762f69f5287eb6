"""Hidden covariance (Serianni & Kalita, ACL 2023): a training-free score of a cell from the
correlation of its hidden states at initialisation.

Serianni & Kalita (ACL 2023, "Training-free Neural Architecture Search for RNNs and
Transformers", arXiv:2306.00288; code github.com/aaronserianni/training-free-nas,
RNN_metrics.ipynb ``hidden_scores`` / ``jacobian_score``). What their code computes, and we do:

  1. the network at its own initialisation (AWD-LSTM's: embedding U(-0.1, 0.1), cell weights
     U(-1/sqrt(H), 1/sqrt(H)) - the same as our FixedCell default), seeded, eval mode;
  2. one minibatch [T, B] of held-out tokens; the hidden states fed *into* each step,
     h_0 (zeros) .. h_{T-1} of the first recurrent layer, stacked ([B, H, T] in their code);
  3. a data matrix with one row per hidden unit and one column per (example, step):
     [H, B*T]; C = its Pearson correlation matrix [H, H] (np.corrcoef);
  4. eigenvalues lambda of C and score = -sum_i [ log(lambda_i + k) + 1 / (lambda_i + k) ],
     k = 1e-5 (the formula of Mellor et al.'s 2020 Jacobian-covariance score, applied to
     hidden states). Higher is better; log x + 1/x is smallest at x = 1, so the best value,
     -H (1 + O(k)), is reached by uncorrelated units (C = I), and correlated units (eigenvalues
     far from 1) lower it.

Details: C is symmetric, so we use eigvalsh (they use np.linalg.eig) and clip round-off
negatives to 0. A hidden unit that is constant over the batch makes C undefined; their
pipeline then recorded NaN for the architecture, and so do we (``score = nan``,
``constant_units`` says why); the screener ranks such cells last.

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
from enas_rnn.scores.registry import register_score

__all__ = ["HIDDEN_COV_K", "HiddenCovConfig", "HiddenCovResult", "hidden_correlation", "hidden_cov_from_corr",
           "hidden_cov_score", "HiddenCovScore"]

#: Jitter k of the eigenvalue score (authors' value).
HIDDEN_COV_K: float = 1e-5


@dataclass
class HiddenCovConfig:
    """Settings of the hidden-covariance score (a Hydra structured config)."""

    seed: int = 0  # seed of the initialisation draw
    k: float = HIDDEN_COV_K  # jitter added to the eigenvalues (Serianni & Kalita: 1e-5)


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

    ``states`` [N, ..., H]: every leading index is one sample (e.g. [T, B, H]). Constant units
    get NaN rows/columns, as np.corrcoef gives.
    """
    h = states.size(-1)
    x = states.reshape(-1, h).double()  # [N, H]: one row per (step, example)
    x = x - x.mean(0, keepdim=True)
    cov = x.T @ x / max(x.size(0) - 1, 1)  # [H, H]
    sd = cov.diagonal().sqrt()
    constant = int((sd == 0).sum())
    corr = cov / (sd[:, None] * sd[None, :])  # 0/0 -> nan for constant units
    return corr.clamp(-1.0, 1.0), constant


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
    """Hidden-covariance score (Serianni & Kalita 2023) of a cell on tokens ``data`` [T, B].

    Same calling convention as :func:`mrs_score_genotype` (``tracker`` is unused; ``cfg`` is a
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
        x = model.embedding(data)  # [T, B, E]
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

