"""The search supernet: one way to build it, one way to evaluate cells on its shared weights.

The supernet is the language model of the search with one ``SharedCell`` holding every weight of
the space (Pham et al. 2018, sec. 2.2). Rewards, derive, the MRS study's shared-weight column and
``scripts/cross_eval.py`` all evaluate cells through :func:`evaluate_cells`, so every shared-weight
perplexity in the project means the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from enas_rnn.genotype import Genotype
from enas_rnn.model import RNNLM, build_model
from enas_rnn.spaces import SearchSpace
from enas_rnn.train import evaluate, perplexity

__all__ = ["build_supernet", "evaluate_cells"]


def build_supernet(model_cfg: Any, space: SearchSpace, vocab_size: int) -> RNNLM:
    """The supernet LM of ``space``: ``model_cfg``'s sizes and dropouts around one ``SharedCell``."""
    return build_model(model_cfg, vocab_size, space=space)


@torch.no_grad()
def evaluate_cells(
    model: RNNLM, genotypes: Sequence[Genotype], data: torch.Tensor, bptt: int, num_batches: int | None,
    start: int = 0,
) -> list[float]:
    """Perplexity of each cell on the shared weights, all on the same ``num_batches`` windows of
    ``data`` [T, B] from row ``start``; a cell whose loss is not finite gets ``inf``."""
    out = []
    for g in genotypes:
        loss = evaluate(model, data, bptt, num_batches, start, genotype=g)
        out.append(perplexity(loss) if math.isfinite(loss) else math.inf)
    return out
