"""`enas-train`: one language-model training run, corpus -> model -> the loop -> metrics.json.

Also used by `enas-compare`, the MRS study and the pipeline (which train several models with the same code).
A run folder holds::

    metrics.json            final numbers (see :func:`train_lm`)
    checkpoints/last.pt     resumable state, written atomically
    checkpoints/best.pt     weights with the best validation loss
    tb/                     TensorBoard events
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from enas_rnn.checkpoint import (
    BEST,
    LAST,
    checkpoint_dir,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    write_text_atomic,
)
from enas_rnn.conf import TrainAppConfig, validate_common
from enas_rnn.errors import CheckpointError
from enas_rnn.genotype import Genotype, load_genotype
from enas_rnn.model import RNNLM, CoreKind, build_model, count_parameters
from enas_rnn.runs import flat_hparams, load_splits, resolve_device, to_device
from enas_rnn.train import LoopState, StepResult, evaluate, fit, perplexity


def build_lm(cfg: Any, vocab_size: int) -> tuple[RNNLM, Optional[Genotype]]:
    """The language model an app config describes (``model`` and, for cells, ``cell``), and its genotype."""
    if CoreKind(cfg.model.core) != CoreKind.cell:  # nn.LSTM / nn.GRU: no genotype
        return build_model(cfg.model, vocab_size), None
    genotype = load_genotype(cfg.cell)
    return build_model(cfg.model, vocab_size, genotype), genotype


def _restore_config(run_dir: Path) -> tuple[DictConfig, dict]:
    payload = load_checkpoint(checkpoint_dir(run_dir) / LAST)
    # Merge into the schema so the restored config is typed and validated like a fresh one.
    return OmegaConf.merge(OmegaConf.structured(TrainAppConfig), payload["config"]), payload


def train_lm(
    cfg: DictConfig,
    run_dir: str | Path,
    on_step: Optional[Callable[[LoopState, StepResult], None]] = None,
) -> dict[str, Any]:
    """Trains (or, with ``cfg.resume``, continues) one language model; writes and returns metrics.

    metrics.json: valid_ppl (best validation), test_ppl (of the best-validation weights),
    num_params, tokens_per_s (training only), wall_s, steps, skipped_steps, plus the history of
    validations for learning curves.
    """
    wall_t0 = time.perf_counter()
    payload = None
    if cfg.get("resume"):
        run_dir = Path(cfg.resume)
        saved, payload = _restore_config(run_dir)
        # The saved config is the run's identity; only the progress bar follows the new command.
        saved.train.progress = cfg.train.progress
        cfg = saved
    run_dir = Path(run_dir)
    validate_common(cfg)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    splits = load_splits(cfg.data, device)
    model, g = build_lm(cfg, len(splits.corpus.vocab))
    genotype = None if g is None else g.to_dict()
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    state = LoopState(lr=cfg.train.lr)
    state.bptt_gen.manual_seed(cfg.seed)
    wall_before = 0.0
    if payload is not None:
        try:
            model.load_state_dict(payload["state_dicts"]["model"])
            optimizer.load_state_dict(payload["state_dicts"]["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint in {run_dir} does not match the model its config builds ({exc}); "
                "it was written by another version: start a new run"
            ) from None
        state = LoopState.from_dict(payload["loop"])
        state.hidden = to_device(payload.get("hidden"), device)
        wall_before = payload.get("wall_s", 0.0)
        set_rng_state(payload["rng"])

    cfg_dict = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    ckpt_dir = checkpoint_dir(run_dir)

    def save(st: LoopState, is_best: bool) -> None:
        base = {"config": cfg_dict, "genotype": genotype, "step": st.step}
        if is_best:
            save_checkpoint(ckpt_dir / BEST, {**base, "state_dicts": {"model": model.state_dict()}})
        save_checkpoint(
            ckpt_dir / LAST,
            {
                **base,
                "state_dicts": {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                "loop": st.to_dict(),
                "hidden": st.hidden,
                "rng": rng_state(),
                "wall_s": wall_before + time.perf_counter() - wall_t0,
            },
        )

    writer = SummaryWriter(str(run_dir / "tb"), purge_step=state.step if payload is not None else None)
    windows = math.ceil((splits.train.size(0) - 1) / cfg.data.bptt)
    total = cfg.train.epochs * windows
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    num_params = count_parameters(model)
    with tqdm(total=total, initial=state.step, disable=not cfg.train.progress, unit="step", leave=False) as bar:
        fit(model, optimizer, splits.train, splits.valid, state, cfg.train, cfg.data, writer, save, bar, on_step)

    best = load_checkpoint(ckpt_dir / BEST, map_location=device) if (ckpt_dir / BEST).exists() else None
    if best is not None:
        model.load_state_dict(best["state_dicts"]["model"])
    test_loss = evaluate(model, splits.test, cfg.data.bptt, cfg.train.eval_batches)
    metrics = {
        "valid_ppl": perplexity(state.best_valid_loss),
        "test_ppl": perplexity(test_loss),
        "num_params": num_params,
        "tokens_per_s": state.tokens / state.train_seconds if state.train_seconds > 0 else 0.0,
        "wall_s": wall_before + time.perf_counter() - wall_t0,
        "steps": state.step,
        "skipped_steps": state.skipped,
        "epochs": state.epoch,
        "tokens": state.tokens,
        "model": cfg.model.core.value if isinstance(cfg.model.core, CoreKind) else str(cfg.model.core),
        "genotype": genotype,
        "device": str(device),
        "history": state.history,
    }
    writer.add_hparams(
        flat_hparams(cfg_dict),
        {"hparam/valid_ppl": metrics["valid_ppl"], "hparam/test_ppl": metrics["test_ppl"]},
        run_name=".",
    )
    writer.close()
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics
