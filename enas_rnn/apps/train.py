"""`enas-train`: one language-model training run, corpus -> model -> the loop -> metrics.json.

Also used by `enas-compare`, the MRS study and the pipeline (which train several models with the same code).
A run folder holds::

    metrics.json            final numbers (see :func:`train_lm`)
    checkpoints/last.pt     resumable state, written atomically
    checkpoints/best.pt     weights with the best validation loss
    tb/                     TensorBoard events
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from enas_rnn.board import PPL_CAP, cell_markdown, hparams, open_writer, write_hparams
from enas_rnn.checkpoint import (
    BEST,
    LAST,
    checkpoint_dir,
    load_checkpoint,
    load_resumable,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from enas_rnn.conf import TrainAppConfig, validate_common
from enas_rnn.errors import CheckpointError, TrainingDiverged
from enas_rnn.genotype import Genotype, load_genotype
from enas_rnn.model import RNNLM, CoreKind, build_model, count_parameters
from enas_rnn.runs import (
    check_resume_overrides,
    folder_lock,
    load_splits,
    refuse_occupied,
    resolve_device,
    to_device,
    write_json,
)
from enas_rnn.train import (
    LoopState,
    StepResult,
    evaluate,
    fit,
    perplexity,
    show_progress,
)

log = logging.getLogger(__name__)


def build_lm(cfg: Any, vocab_size: int) -> tuple[RNNLM, Optional[Genotype]]:
    """The language model an app config describes (``model`` and, for cells, ``cell``), and its genotype."""
    if CoreKind(cfg.model.core) != CoreKind.cell:  # nn.LSTM / nn.GRU: no genotype
        return build_model(cfg.model, vocab_size), None
    genotype = load_genotype(cfg.cell)
    return build_model(cfg.model, vocab_size, genotype), genotype


def _restore_config(run_dir: Path) -> tuple[DictConfig, dict]:
    payload = load_resumable(run_dir)
    if "search" in payload or "loop" not in payload:
        raise CheckpointError(f"resume={run_dir} is not an enas-train run (its checkpoint holds "
                              f"{'a search' if 'search' in payload else 'no training state'}): "
                              f"continue a search with enas-search resume={run_dir}")
    # Merge into the schema so the restored config is typed and validated like a fresh one.
    return OmegaConf.merge(OmegaConf.structured(TrainAppConfig), payload["config"]), payload


def train_lm(
    cfg: DictConfig,
    run_dir: str | Path,
    on_step: Optional[Callable[[LoopState, StepResult], None]] = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Trains (or, with ``cfg.resume``, continues) one language model; writes and returns metrics.

    metrics.json: valid_ppl (best validation), test_ppl (of the best-validation weights),
    num_params, tokens_per_s (training only), wall_s, steps, skipped_steps, plus the history of
    validations for learning curves.
    """
    if not cfg.get("resume"):
        refuse_occupied(run_dir, "enas-train")
    with folder_lock(Path(cfg.get("resume") or run_dir), "enas-train run", create=not cfg.get("resume")):
        try:
            return _train_lm(cfg, run_dir, on_step, overrides)
        except TrainingDiverged as exc:
            write_json(Path(cfg.get("resume") or run_dir) / "diverged.json", {"error": str(exc)})
            raise


def _train_lm(cfg: DictConfig, run_dir: str | Path, on_step: Optional[Callable[[LoopState, StepResult], None]],
              overrides: Sequence[str]) -> dict[str, Any]:
    wall_t0 = time.perf_counter()
    payload = None
    if cfg.get("resume"):
        run_dir = Path(cfg.resume)
        saved, payload = _restore_config(run_dir)
        # The saved config is the run's identity; only the progress bar and the device follow the
        # new command, and an override that cannot apply is an error (check_resume_overrides).
        check_resume_overrides(overrides, cfg, saved)
        saved.train.progress = cfg.train.progress
        saved.device = cfg.device
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
            save_checkpoint(ckpt_dir / BEST, {**base, "state_dicts": {"model": model.state_dict()}}, keep_previous=False)
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

    name = f"train-{'nn_lstm' if g is None else g.hash()}-h{cfg.model.hidden_size}-seed{cfg.seed}"
    writer = open_writer(run_dir, name, state.step if payload is not None else None)
    if g is not None:
        writer.add_text("cell", cell_markdown(g), 0)
    windows = math.ceil((splits.train.size(0) - 1) / cfg.data.bptt)
    total = cfg.train.epochs * windows
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    num_params = count_parameters(model)
    log.info("enas-train in %s: %s, %s parameters, %d layer(s) of %d units; %s; budget %s; device %s%s", run_dir,
             "nn.LSTM" if g is None else f"cell {g.hash()} ({g.space} space)", f"{num_params:,}", cfg.model.num_layers,
             cfg.model.hidden_size, f"{cfg.data.name}: {splits.train.numel():,} training tokens",
             f"{cfg.train.max_steps} steps" if cfg.train.max_steps else f"{cfg.train.epochs} epochs", device,
             f", resumed at step {state.step}" if payload is not None else "")
    with tqdm(total=total, initial=state.step, disable=not show_progress(cfg.train.progress), unit="step",
              leave=False) as bar:
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
    write_hparams(writer, hparams(cfg, "train", overrides),
                  {"hparam/valid_ppl": min(metrics["valid_ppl"], PPL_CAP), "hparam/test_ppl": min(metrics["test_ppl"], PPL_CAP)},
                  state.step)
    writer.close()
    write_json(run_dir / "metrics.json", metrics)
    return metrics
