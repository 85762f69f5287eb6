"""The one language-model training and evaluation loop.

It serves the nn.LSTM baseline, a retrained cell and the ENAS shared supernet alike:

* :func:`train_steps` runs SGD over BPTT windows of the training stream, carrying the hidden state
  and detaching it between windows, and stops after a number of steps or at the end of the epoch.
  The search calls it in short phases, with a freshly sampled child per window
  (``core_kwargs_fn``); the LM app calls it for whole epochs through :func:`fit`.
* :func:`evaluate` returns the mean cross-entropy per token of a split.

Progress lives in :class:`LoopState` (never in a config) so it can be checkpointed and resumed.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from enas_rnn import interrupt
from enas_rnn.corpus import DataConfig, get_batch, sample_seq_len
from enas_rnn.errors import TrainingDiverged, WorseThanChance
from enas_rnn.interrupt import Interrupted
from enas_rnn.model import RNNLM, Hidden, detach_hidden
from enas_rnn.rules import INT0, INT1, NONNEG, OPT_INT1, POSITIVE, number_in, rule

CoreKwargsFn = Callable[[], dict[str, Any]]
log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """The one LM loop: SGD, clipping, BPTT, lr decay, fault handling, checkpoints."""

    lr: float = rule(20.0, POSITIVE)
    epochs: int = rule(6, INT1)
    max_steps: Optional[int] = rule(None, OPT_INT1)  # stop after this many optimiser steps (a budget)
    clip: float = rule(0.25, POSITIVE)
    weight_decay: float = rule(0.0, NONNEG)
    # lr *= lr_decay after every epoch >= decay_start (Zaremba et al. 2014)
    lr_decay: float = rule(1.0, number_in(0.0, 1.0, lo_open=True))
    decay_start: int = rule(1, INT0)
    max_nonfinite: int = rule(20, INT0)  # skipped non-finite steps tolerated before the run stops
    log_every: int = rule(50, INT1)  # steps between TensorBoard train scalars
    eval_every: Optional[int] = rule(None, OPT_INT1)  # steps between mid-epoch validations (learning curves); None: per epoch
    eval_batches: Optional[int] = rule(None, OPT_INT1)  # cap on validation windows (fast presets); None: the whole split
    checkpoint_every: Optional[int] = rule(200, OPT_INT1)  # steps between mid-epoch checkpoints; one is always written per epoch
    progress: Optional[bool] = None  # tqdm progress bar; None: only when stderr is a terminal (never frames in a log)


@dataclass
class LoopState:
    """Mutable progress of a training run; everything needed to resume it exactly."""

    step: int = 0  # optimiser steps attempted (skipped ones included)
    epoch: int = 0  # completed epochs
    pos: int = 0  # position in the [T, B] training stream within the current epoch
    lr: float = 0.0
    tokens: int = 0  # training tokens seen
    skipped: int = 0  # steps skipped for a non-finite loss or gradient
    refused: int = 0  # updates refused for a loss above ``skip_above`` (the search's skip_exploding)
    train_seconds: float = 0.0  # time spent in training steps (excludes evaluation)
    best_valid_loss: float = math.inf
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per validation
    hidden: Optional[list[Hidden]] = None  # carried between windows; not in to_dict()
    bptt_gen: torch.Generator = field(default_factory=torch.Generator)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("hidden", "bptt_gen")}
        d["history"] = [dict(h) for h in self.history]
        d["bptt_gen"] = self.bptt_gen.get_state()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoopState":
        d = dict(d)
        gen = torch.Generator()
        gen.set_state(d.pop("bptt_gen"))
        return cls(**d, bptt_gen=gen)


@dataclass
class StepResult:
    """What one training window produced (for logging and for the search's bookkeeping)."""

    loss: float
    seq_len: int
    ok: bool  # False: non-finite loss or gradient (or ``refused``), the update was skipped
    refused: bool = False  # the loss was above the caller's ``skip_above``: no backward, no update


def guarded_step(loss: Tensor, optimizer: torch.optim.Optimizer, params: list[Tensor], clip: float) -> tuple[float, bool]:
    """One optimiser update from ``loss``: backward, clip the global gradient norm to ``clip``
    (Pascanu et al. 2013), and step only when the loss and the norm are finite; otherwise the
    gradients are dropped and the weights stay as they were. Returns (loss value, stepped).
    Every training loop of the package (LM windows, synthetic-task batches) updates through it."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(params, clip)
    # One host sync per step: we must know before stepping whether the update is finite.
    loss_value = float(loss.detach())
    ok = math.isfinite(loss_value) and bool(torch.isfinite(grad_norm))
    if ok:
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    return loss_value, ok


def check_skipped(skipped: int, max_nonfinite: int) -> None:
    """Raises TrainingDiverged once more than ``max_nonfinite`` steps were skipped as non-finite."""
    if skipped > max_nonfinite:
        raise TrainingDiverged(
            f"{skipped} training steps had a non-finite loss or gradient "
            f"(train.max_nonfinite={max_nonfinite}); the weights were never updated with them. "
            "Lower train.lr, lower train.clip, or set model.state_clip for searched cells"
        )


def train_steps(
    model: RNNLM,
    optimizer: torch.optim.Optimizer,
    source: Tensor,
    state: LoopState,
    cfg: TrainConfig,
    data: DataConfig,
    num_steps: Optional[int] = None,
    core_kwargs_fn: Optional[CoreKwargsFn] = None,
    on_step: Optional[Callable[[LoopState, StepResult], None]] = None,
    stop: Optional[Callable[[], bool]] = None,
    skip_above: Optional[float] = None,
) -> bool:
    """Trains on consecutive BPTT windows of ``source`` [T, B] from ``state.pos``.

    Stops after ``num_steps`` windows or at the end of the stream; returns True when the epoch
    ended (then ``state.pos`` is reset and ``state.epoch`` advanced). A window whose loss or
    gradient norm is not finite is skipped: no optimiser step, the hidden state is reset, the step
    is counted in ``state.skipped``; after ``cfg.max_nonfinite`` of them TrainingDiverged is raised.

    ``stop`` (e.g. :func:`enas_rnn.interrupt.requested`) is asked before every window: when it says
    True the call returns at once, between two windows, with ``state`` as after the last finished
    step; the caller tells this early return from a finished one by the steps done.

    ``skip_above`` (the search's ``skip_exploding``: ln 10V, 10x a uniform guess) refuses the update of a window
    whose loss is above it: no backward, no step, the hidden state reset (counted in
    ``state.refused``, not as a non-finite step) - an exploding child's gradient would move the shared
    weights in its own direction.
    """
    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    batch_size = source.size(1)
    if state.hidden is None:
        state.hidden = model.init_hidden(batch_size)
    done = 0
    while state.pos < source.size(0) - 1 and (num_steps is None or done < num_steps):
        if stop is not None and stop():
            break
        t0 = time.perf_counter()
        seq_len = sample_seq_len(data.bptt, state.bptt_gen) if data.variable_bptt else data.bptt
        # Longer windows take a proportionally larger step (Merity et al. 2018, 4.1).
        lr = state.lr * seq_len / data.bptt if data.variable_bptt else state.lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        inp, target = get_batch(source, state.pos, seq_len)
        kwargs = core_kwargs_fn() if core_kwargs_fn is not None else {}
        loss, hidden = model.loss(inp, target, detach_hidden(state.hidden), **kwargs)
        refused = False
        if skip_above is not None:
            loss_value = float(loss.detach())
            refused = math.isfinite(loss_value) and loss_value > skip_above
        if refused:
            ok = False
            state.hidden = model.init_hidden(batch_size)
            state.refused += 1
        else:
            loss_value, ok = guarded_step(loss, optimizer, params, cfg.clip)
            if ok:
                state.hidden = hidden
            else:
                state.hidden = model.init_hidden(batch_size)
                state.skipped += 1
        n = inp.size(0)
        state.pos += n
        state.step += 1
        state.tokens += n * batch_size
        state.train_seconds += time.perf_counter() - t0
        done += 1
        if on_step is not None:
            on_step(state, StepResult(loss_value, n, ok, refused))
        if not ok and not refused:
            check_skipped(state.skipped, cfg.max_nonfinite)
    if state.pos >= source.size(0) - 1:
        state.pos = 0
        state.epoch += 1
        state.hidden = None
        return True
    return False


@torch.no_grad()
def evaluate(
    model: RNNLM,
    source: Tensor,
    bptt: int,
    max_batches: Optional[int] = None,
    start: int = 0,
    **core_kwargs: Any,
) -> float:
    """Mean cross-entropy per token over ``source`` [T, B] from row ``start`` (or over its first
    ``max_batches`` windows from there); the hidden state is carried across windows, as in training."""
    model.eval()
    hidden = model.init_hidden(source.size(1))
    total = torch.zeros((), dtype=torch.float64, device=source.device)
    count = 0
    for k, i in enumerate(range(start, source.size(0) - 1, bptt)):
        if max_batches is not None and k >= max_batches:
            break
        inp, target = get_batch(source, i, bptt)
        loss, hidden = model.loss(inp, target, hidden, **core_kwargs)
        total += loss.double() * target.numel()
        count += target.numel()
    return float(total) / max(count, 1)


def show_progress(flag: Optional[bool]) -> bool:
    """Whether to draw a progress bar: as asked, or (None) only when stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else bool(flag)


def perplexity(loss: float) -> float:
    """exp(loss), saturating instead of overflowing for a diverged model."""
    return math.exp(loss) if loss < 700 else math.inf


def worse_than_uniform(ppl: float, vocab_size: int) -> bool:
    """Whether a perplexity is worse than a uniform guess over the vocabulary (whose perplexity is
    exactly ``vocab_size``); NaN and infinity are worse. Such a model learnt nothing usable: the
    training split's word frequencies alone reach 687 on PTB's validation split (10,000 words)."""
    return not ppl <= vocab_size


def _number(x: float) -> str:
    """A perplexity for a message: 10,000.00 or 2.8e+73."""
    return f"{x:,.2f}" if x < 1e7 else f"{x:.3g}"


def worse_than_uniform_message(ppl: float, vocab_size: int, what: str, fix: str) -> str:
    """One sentence for :class:`WorseThanChance`: ``what`` reached ``ppl``, the chance level, ``fix``."""
    return (f"{what}: the best validation perplexity, {_number(ppl)}, is worse than a uniform guess over the "
            f"{vocab_size:,}-word vocabulary (perplexity {vocab_size:,}), so the weights are no result. {fix}")


class ScalarLogger:
    """The logging surface the loop needs; a TensorBoard SummaryWriter satisfies it."""

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:  # pragma: no cover - protocol
        ...


def fit(
    model: RNNLM,
    optimizer: torch.optim.Optimizer,
    train: Tensor,
    valid: Tensor,
    state: LoopState,
    cfg: TrainConfig,
    data: DataConfig,
    writer: Optional[ScalarLogger] = None,
    save: Optional[Callable[[LoopState, bool], None]] = None,
    progress: Any = None,
    on_step: Optional[Callable[[LoopState, StepResult], None]] = None,
) -> LoopState:
    """Trains for ``cfg.epochs`` epochs (or ``cfg.max_steps`` steps), validating at each epoch end
    and every ``cfg.eval_every`` steps, decaying the lr per epoch, and calling
    ``save(state, is_best)`` at every validation and every ``cfg.checkpoint_every`` steps.

    Resumable: everything it reads or changes is in ``state``, so a state restored from a
    checkpoint continues exactly where the saved run was.

    Failures it raises (after ``save`` has kept what there is):

    * :class:`TrainingDiverged` for a non-finite validation (before any checkpoint of those weights)
      or too many skipped steps;
    * :class:`WorseThanChance` at the end of the budget when the best validation perplexity is worse
      than a uniform guess (:func:`worse_than_uniform`, chance = ``model.vocab_size``); a run may
      start worse than that and improve, so only the end counts, and a finished run that failed
      fails again when resumed;
    * :class:`~enas_rnn.interrupt.Interrupted` when a stop was requested
      (:func:`enas_rnn.interrupt.requested`, after :func:`enas_rnn.interrupt.install`): at the
      next window boundary, never mid-step, after whatever was due at that boundary (a validation,
      the lr decay of an epoch end) and ``save(state, False)``, so a checkpoint of ``state.step``
      exists. Its message holds the placeholder ``resume=<folder>``; the caller, who knows the
      folder, re-raises ``exc.with_folder(run_dir)``.
    """
    window_tokens = 0
    window_loss = 0.0
    window_t0 = state.train_seconds

    def step_hook(st: LoopState, res: StepResult) -> None:
        nonlocal window_tokens, window_loss, window_t0
        if res.ok:
            window_loss += res.loss * res.seq_len
            window_tokens += res.seq_len
        if progress is not None:
            progress.update(1)
            if res.ok:
                progress.set_postfix(loss=f"{res.loss:.3f}", lr=f"{st.lr:.3g}", refresh=False)
        if writer is not None and st.step % cfg.log_every == 0 and window_tokens > 0:
            loss = window_loss / window_tokens
            seconds = max(st.train_seconds - window_t0, 1e-9)
            writer.add_scalar("train/loss", loss, st.step)
            writer.add_scalar("train/ppl", perplexity(loss), st.step)
            writer.add_scalar("train/lr", st.lr, st.step)
            writer.add_scalar("train/tokens_per_s", window_tokens * train.size(1) / seconds, st.step)
            writer.add_scalar("train/skipped_steps", st.skipped, st.step)
            window_tokens, window_loss, window_t0 = 0, 0.0, st.train_seconds
        if on_step is not None:
            on_step(st, res)

    def validate() -> None:
        loss = evaluate(model, valid, data.bptt, cfg.eval_batches)
        if not math.isfinite(perplexity(loss)):
            # Divergence is a result, not a success: stop before a checkpoint of the diverged weights.
            last = state.history[-1] if state.history else None
            kept = (f"checkpoints/best.pt keeps the weights of the last finite validation (step {last['step']}, "
                    f"valid ppl {last['valid_ppl']:.2f})") if last else "no validation was finite, so no weights are kept"
            raise TrainingDiverged(
                f"the validation loss is not finite at step {state.step}: the model diverged; {kept}. "
                "Lower train.lr or train.clip (or set model.state_clip for a searched cell) and start a new run"
            )
        is_best = loss < state.best_valid_loss
        if is_best:
            state.best_valid_loss = loss
        state.history.append(
            {"step": state.step, "epoch": state.epoch, "tokens": state.tokens, "valid_loss": loss,
             "valid_ppl": perplexity(loss), "lr": state.lr}
        )
        if writer is not None:
            writer.add_scalar("valid/ppl", perplexity(loss), state.step)
            writer.add_scalar("valid/log_ppl", loss, state.step)  # log scale: readable from ppl 10^4 to 10^2
            writer.add_scalar("valid/loss", loss, state.step)
        speed = state.tokens / state.train_seconds if state.train_seconds > 0 else 0.0
        log.info("step %d (epoch %d): valid ppl %.2f%s, lr %.3g, %d tokens seen, %.0f tokens/s", state.step,
                 state.epoch, perplexity(loss), " (best)" if is_best else "", state.lr, state.tokens, speed)
        if progress is not None:
            progress.set_description(f"epoch {state.epoch} valid ppl {perplexity(loss):.1f}")
        if save is not None:
            save(state, is_best)

    def budget_left() -> Optional[int]:
        return None if cfg.max_steps is None else cfg.max_steps - state.step

    while state.epoch < cfg.epochs and (budget_left() is None or budget_left() > 0):
        # Run up to the next step at which something happens (validation, checkpoint, budget end).
        chunk = budget_left()
        for every in (cfg.eval_every, cfg.checkpoint_every):
            if every is not None:
                to_next = every - state.step % every
                chunk = to_next if chunk is None else min(chunk, to_next)
        before = state.step
        epoch_ended = train_steps(model, optimizer, train, state, cfg, data, chunk, on_step=step_hook,
                                  stop=interrupt.requested)
        if not epoch_ended and (chunk is None or state.step - before < chunk):
            # Stopped early at a window boundary: nothing was due here, so only the checkpoint is.
            if save is not None:
                save(state, False)
            raise Interrupted(state.step, interrupt.requested_by(), saved=save is not None)
        if epoch_ended:
            if state.epoch >= cfg.decay_start:
                state.lr *= cfg.lr_decay
            validate()
        elif budget_left() == 0:
            validate()
        elif cfg.eval_every is not None and state.step % cfg.eval_every == 0:
            validate()
        elif save is not None:
            save(state, False)
        if interrupt.requested():  # it came during the chunk's last window or its validation: saved above
            raise Interrupted(state.step, interrupt.requested_by(), saved=save is not None)
    ppl = perplexity(state.best_valid_loss)
    if state.history and worse_than_uniform(ppl, model.vocab_size):
        raise WorseThanChance(worse_than_uniform_message(
            ppl, model.vocab_size, f"training ended after {state.step} steps",
            f"Lower train.lr (now {cfg.lr:g}) or train.clip (now {cfg.clip:g}), or set model.state_clip for a "
            "searched cell, and start a new run"))
    return state
