"""`enas-search`: ENAS or random search with weight sharing (``enas_rnn.search``), fresh or resumed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from enas_rnn.checkpoint import load_resumable
from enas_rnn.conf import SearchAppConfig, validate_search
from enas_rnn.errors import CheckpointError, ConfigError
from enas_rnn.model import RNNLM
from enas_rnn.runs import (
    Splits,
    check_resume_overrides,
    folder_lock,
    load_splits,
    refuse_occupied,
)
from enas_rnn.search import Hook, SearchRun
from enas_rnn.spaces import space_from_config
from enas_rnn.supernet import build_supernet


def restore_search_config(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[DictConfig, dict]:
    """The config and newest readable checkpoint of a search run (merged into the schema: typed like a fresh one)."""
    payload = load_resumable(run_dir, map_location=map_location)
    if "search" not in payload:
        raise CheckpointError(f"{run_dir} is not an enas-search run (its checkpoint holds no search state): "
                              f"continue a training run with enas-train resume={run_dir}")
    return OmegaConf.merge(OmegaConf.structured(SearchAppConfig), payload["config"]), payload


def run_search(cfg: DictConfig, run_dir: str | Path, hook: Optional[Hook] = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Runs (or, with ``cfg.resume``, continues) a search and derives the best cell."""
    payload = None
    if cfg.get("resume"):
        run_dir = Path(cfg.resume)
        if not run_dir.is_dir():
            raise ConfigError(f"resume={run_dir}: no such folder; pass the folder of an earlier enas-search run")
        given = cfg
        cfg, payload = restore_search_config(run_dir)
        # The saved config is the run's identity; only the progress bar and the device follow the new
        # command, and an override that cannot apply is an error.
        check_resume_overrides(overrides, given, cfg)
        cfg.train.progress = given.train.progress
        cfg.device = given.device
    else:
        refuse_occupied(run_dir, "enas-search")
    validate_search(cfg)
    with folder_lock(run_dir, "enas-search run"):
        return SearchRun(cfg, run_dir, payload, hook, overrides).run()


def load_supernet(run_dir: str | Path, device: str = "cpu") -> tuple[RNNLM, DictConfig, Splits]:
    """The shared model of a search run (its last checkpoint), its config and its data splits,
    e.g. to evaluate other cells on the same weights (scripts/cross_eval.py, the MRS study)."""
    cfg, payload = restore_search_config(run_dir, map_location=device)
    splits = load_splits(cfg.data, torch.device(device))
    model = build_supernet(cfg.model, space_from_config(cfg.space), len(splits.corpus.vocab)).to(device)
    model.load_state_dict(payload["state_dicts"]["model"])
    return model, cfg, splits
