"""The search supernet: one way to build it, one way to evaluate cells on its shared weights, one way to
load a finished search's supernet back.

The supernet is the language model of the search with one ``SharedCell`` holding every weight of
the space (Pham et al. 2018, sec. 2.2). Rewards, derive, the MRS study's shared-weight column and
``scripts/cross_eval.py`` all evaluate cells through :func:`evaluate_cells`, so every shared-weight
perplexity in the project means the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from enas_rnn.checkpoint import load_resumable
from enas_rnn.corpus import DataConfig
from enas_rnn.errors import CheckpointError
from enas_rnn.genotype import Genotype
from enas_rnn.model import RNNLM, ModelConfig, build_model
from enas_rnn.runs import Splits, load_splits
from enas_rnn.spaces import SearchSpace, SpaceConfig, space_from_config
from enas_rnn.train import evaluate, perplexity

__all__ = ["build_supernet", "evaluate_cells", "load_supernet"]


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


def load_supernet(folder: str | Path, device: str | torch.device = "cpu") -> tuple[RNNLM, DictConfig, Splits]:
    """The shared model of a search run (its last checkpoint), the search's config and its data splits,
    e.g. to evaluate other cells on the same weights (the selection's top-ups, the MRS study,
    scripts/cross_eval.py)."""
    payload = load_resumable(folder, map_location=device)
    if "search" not in payload:
        raise CheckpointError(f"{folder} is not an enas-search run (its checkpoint holds no supernet)")
    cfg = OmegaConf.create(payload["config"])
    model_cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg.model)
    space = space_from_config(OmegaConf.merge(OmegaConf.structured(SpaceConfig), cfg.space))
    splits = load_splits(OmegaConf.merge(OmegaConf.structured(DataConfig), cfg.data), torch.device(device))
    model = build_supernet(model_cfg, space, len(splits.corpus.vocab)).to(device)
    model.load_state_dict(payload["state_dicts"]["model"])
    model.eval()
    return model, cfg, splits
