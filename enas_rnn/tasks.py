"""Synthetic sequence tasks on which any recurrent core trains: nth-element recall and sine regression.

* ``nth`` (Brownlee, "Long Short-Term Memory Networks With Python", the echo-sequence problem): a
  sequence of ``seq_len`` random integers in [0, F), fed one-hot; the answer is the integer at
  ``position`` (0-based, default 2 of 5). Classification: cross-entropy, accuracy. Chance is 1/F.
  The model must carry one symbol across ``seq_len - 1 - position`` steps, so longer sequences,
  more features and fewer units make it harder; a larger data set makes it easier.
* ``sine`` (the MRS sine study, Camero et al. 2018; ``scripts/mrs_sine.py``): y_i = sin(2 pi i dt),
  dt = 0.1 (10 points a period); the last ``seq_len`` values (the look-back window) predict the next
  one. Regression: MSE loss (what the authors train on), MAE reported. The validation and test
  windows continue the series after the training windows.

The model (:class:`TaskModel`) is

    x [B, T] -> input projection [T, B, E] -> core_1 -> ... -> core_L [T, B, H] -> head(last step) [B, F or 1]

where the input projection is an embedding of the F symbols (one-hot times a matrix) or a linear map
of the scalar, and the cores are the language model's, built by :func:`enas_rnn.model.build_cores`
(nn.LSTM, nn.GRU, or a genotype's FixedCell). The sine head ends in tanh (the authors' dense tanh
output; targets lie in [-1, 1]).

Training (:func:`fit_task`) is a small sibling of the LM loop in ``enas_rnn.train``: shuffled
mini-batches for a budget of steps, each update through :func:`enas_rnn.train.guarded_step`
(clipping, non-finite skip) with the same divergence rule; validation every ``eval_every`` steps,
the best-validation weights kept, optional early stop after ``patience`` validations without
improvement or once the validation metric reaches ``stop_at`` (a solved task stops; a plateau,
common before recall tasks are learnt, does not).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from enas_rnn.errors import WorseThanChance
from enas_rnn.genotype import Genotype
from enas_rnn.model import build_cores, count_parameters
from enas_rnn.rules import INT0, INT1, NONNEG, OPT_INT1, OPT_NONNEG, POSITIVE, check_values, fail, one_of, rule
from enas_rnn.train import check_skipped, guarded_step

__all__ = ["TaskKind", "TaskConfig", "TaskTrainConfig", "TaskData", "TaskModel", "TaskResult", "make_task",
           "build_task_model", "evaluate_task", "fit_task", "validate_task", "task_model_summary", "make_optimizer",
           "chance_level", "worse_than_chance", "SINE_STEP", "OPTIMIZERS", "CHANCE_SE"]

OPTIMIZERS = ("adam", "sgd")
SINE_STEP = 0.1  # sampling interval of the sine series: 10 points a period (the authors' data/sin config)


class TaskKind(str, Enum):
    """Which synthetic task."""

    nth = "nth"  # nth-element recall (classification)
    sine = "sine"  # next value of sin(2 pi t) from a look-back window (regression)


@dataclass
class TaskConfig:
    """A synthetic data set: the task, its shape and its size (seeded)."""

    name: TaskKind = TaskKind.nth
    seq_len: int = rule(5, INT1)  # nth: length of each sequence; sine: the look-back window
    features: int = 10  # nth: F, the number of symbols (one-hot width); sine: unused (one scalar per step)
    position: int = 2  # nth: the answer is the element at this 0-based position
    train_size: int = rule(1000, INT1)  # examples (sequences / windows) in the training set
    valid_size: int = rule(250, INT1)
    test_size: int = rule(1000, INT1)
    seed: int = 0  # the data's own seed (the model's is the app's seed)

    @staticmethod
    def cross_check(cfg: Any, key: Callable[[str], str]) -> None:
        if TaskKind(cfg.name) != TaskKind.nth:
            return
        if cfg.features < 2:
            raise fail(key("features"), cfg.features, "integers >= 2")
        if not 0 <= cfg.position < cfg.seq_len:
            raise fail(key("position"), cfg.position, f"0 .. {key('seq_len')} - 1 = {cfg.seq_len - 1} (0-based index "
                       "of the element to recall)")


@dataclass
class TaskTrainConfig:
    """Mini-batch training on a synthetic task (Adam by default, as Brownlee and the MRS authors use)."""

    optimizer: str = rule("adam", one_of(OPTIMIZERS))  # adam | sgd
    lr: float = rule(0.01, POSITIVE)
    batch_size: int = rule(32, INT1)
    max_steps: int = rule(1000, INT1)  # the budget in optimiser steps (the same for every data-set size)
    clip: float = rule(5.0, POSITIVE)  # global gradient-norm clip
    weight_decay: float = rule(0.0, NONNEG)
    eval_every: int = rule(100, INT1)  # steps between validations (and at the end)
    patience: Optional[int] = rule(None, OPT_INT1)  # stop after this many validations without improvement; None: never
    # stop once the valid metric reaches it (accuracy >= it, MAE <= it); None: never
    stop_at: Optional[float] = rule(None, OPT_NONNEG)
    max_nonfinite: int = rule(20, INT0)  # skipped non-finite steps tolerated before the run stops
    eval_batch_size: int = rule(1000, INT1)


def validate_task(task: Any, train: Any) -> None:
    """Value checks of a task and its training config (each field's rule, and the task's cross checks)."""
    check_values(task, TaskConfig, "task.")
    check_values(train, TaskTrainConfig, "train.")


# ====================================================================================================================
# Data
# ====================================================================================================================


@dataclass
class TaskData:
    """One task's splits: inputs [N, T] (long symbols or float values), targets [N] (long or float)."""

    kind: TaskKind
    train_x: Tensor
    train_y: Tensor
    valid_x: Tensor
    valid_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_outputs: int  # F for nth, 1 for sine

    @property
    def metric(self) -> str:
        """The reported metric: ``acc`` (higher is better) or ``mae`` (lower is better)."""
        return "acc" if self.kind == TaskKind.nth else "mae"

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    def to(self, device: torch.device) -> "TaskData":
        moved = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "valid_x", "valid_y", "test_x", "test_y")}
        return TaskData(self.kind, num_outputs=self.num_outputs, **moved)


def _windows(series: Tensor, start: int, count: int, width: int) -> tuple[Tensor, Tensor]:
    """``count`` look-back windows of ``width`` values from ``series[start:]`` and the value after each."""
    idx = start + torch.arange(count).unsqueeze(1) + torch.arange(width).unsqueeze(0)  # [N, T]
    return series[idx], series[start + width + torch.arange(count)]


def make_task(cfg: Any) -> TaskData:
    """The data set a task config describes (the same for a seed on every machine: CPU generator)."""
    kind = TaskKind(cfg.name)
    if kind == TaskKind.nth:
        gen = torch.Generator().manual_seed(int(cfg.seed))
        splits = []
        for n in (cfg.train_size, cfg.valid_size, cfg.test_size):
            x = torch.randint(0, cfg.features, (n, cfg.seq_len), generator=gen)  # [N, T] symbols
            splits += [x, x[:, cfg.position].clone()]
        return TaskData(kind, *splits, num_outputs=int(cfg.features))
    # sine: one series, cut into consecutive windows; valid and test continue after train
    total = cfg.train_size + cfg.valid_size + cfg.test_size + cfg.seq_len
    series = torch.sin(2 * math.pi * SINE_STEP * torch.arange(total, dtype=torch.float64)).float()
    tx, ty = _windows(series, 0, cfg.train_size, cfg.seq_len)
    vx, vy = _windows(series, cfg.train_size, cfg.valid_size, cfg.seq_len)
    sx, sy = _windows(series, cfg.train_size + cfg.valid_size, cfg.test_size, cfg.seq_len)
    return TaskData(kind, tx, ty, vx, vy, sx, sy, num_outputs=1)


# ====================================================================================================================
# Model
# ====================================================================================================================


class TaskModel(nn.Module):
    """Input projection -> recurrent cores (any kind) -> a head on the last step."""

    def __init__(self, kind: TaskKind, num_outputs: int, cores: list[nn.Module], emb_size: int,
                 init_range: Optional[float] = None) -> None:
        super().__init__()
        self.kind = TaskKind(kind)
        # nth: one-hot times a matrix is an embedding lookup; sine: a scalar per step.
        self.proj: nn.Module = nn.Embedding(num_outputs, emb_size) if self.kind == TaskKind.nth else nn.Linear(1, emb_size)
        self.cores = nn.ModuleList(cores)
        self.head = nn.Linear(cores[-1].hidden_size, num_outputs)
        if init_range is not None:
            for p in self.parameters():
                nn.init.uniform_(p, -init_range, init_range)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, T] -> logits [B, F] (nth) or predictions [B] in [-1, 1] (sine)."""
        x = x.t()  # [T, B]: the cores are time-major
        h = self.proj(x) if self.kind == TaskKind.nth else self.proj(x.unsqueeze(-1))  # [T, B, E]
        for core in self.cores:
            h, _ = core(h, core.init_hidden(h.size(1)))  # [T, B, H]
        out = self.head(h[-1])  # the last step: [B, F] or [B, 1]
        return out if self.kind == TaskKind.nth else torch.tanh(out.squeeze(-1))

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy (nth) or MSE (sine), averaged over the batch."""
        return F.cross_entropy(out, y) if self.kind == TaskKind.nth else F.mse_loss(out, y)


def build_task_model(task: TaskData | TaskKind, num_outputs: int | None, model_cfg: Any,
                     genotype: Genotype | None = None) -> TaskModel:
    """The task model for a data set (or a kind and output count) with ``model_cfg``'s cores
    (``core``, ``emb_size``, ``hidden_size``, ``num_layers``, cell settings, ``init_range``)."""
    if isinstance(task, TaskData):
        kind, num_outputs = task.kind, task.num_outputs
    else:
        kind = TaskKind(task)
    assert num_outputs is not None
    cores = build_cores(model_cfg, int(model_cfg.emb_size), genotype)
    return TaskModel(kind, num_outputs, cores, int(model_cfg.emb_size), model_cfg.init_range)


# ====================================================================================================================
# Training and evaluation
# ====================================================================================================================


@torch.no_grad()
def evaluate_task(model: TaskModel, x: Tensor, y: Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """(mean loss, metric) over a split: accuracy for nth, MAE for sine."""
    model.eval()
    loss_sum, metric_sum = 0.0, 0.0
    for i in range(0, x.size(0), batch_size):
        out = model(x[i : i + batch_size])
        yb = y[i : i + batch_size]
        n = yb.size(0)
        loss_sum += float(model.loss(out, yb)) * n
        if model.kind == TaskKind.nth:
            metric_sum += float((out.argmax(-1) == yb).sum())
        else:
            metric_sum += float((out - yb).abs().sum())
    n = max(x.size(0), 1)
    return loss_sum / n, metric_sum / n


@dataclass
class TaskResult:
    """What a task run reached: best-validation weights evaluated on every split."""

    steps: int = 0
    skipped: int = 0
    train_seconds: float = 0.0
    stopped_early: bool = False
    best_step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # {train,valid,test}_{loss,acc|mae}
    history: list[dict[str, float]] = field(default_factory=list)


def _compare(kind: TaskKind, new: float, old: float, new_loss: float, old_loss: float) -> tuple[bool, bool]:
    """(keep these weights, the metric improved). Accuracy: higher is better and a tie with a lower
    loss keeps the new weights (a run at 100% still sharpens) without counting as progress for
    ``patience``; MAE: lower is better."""
    if kind == TaskKind.nth:
        return new > old or (new == old and new_loss < old_loss), new > old
    return new < old, new < old


#: How many standard errors below a uniform guess's accuracy an nth run must end to count as worse than it.
#: A uniform guess scores 1/F on average with sd sqrt(p (1 - p) / n) on n validation examples; a model
#: that learnt nothing (a constant answer, the class frequencies) lands anywhere in that band, and such a
#: run is a result (the cell cannot carry the symbol), not a failure.
CHANCE_SE = 3.0


def chance_level(data: TaskData) -> float:
    """What guessing reaches on the validation split, in the unit :func:`worse_than_chance` compares.

    nth: the accuracy of a uniform guess over the F symbols, 1/F. sine: the MSE (the training loss) of
    always predicting the mean of the training targets.
    """
    if data.kind == TaskKind.nth:
        return 1.0 / data.num_outputs
    return float(((data.valid_y - data.train_y.mean()) ** 2).mean())


def worse_than_chance(data: TaskData, history: list[dict[str, float]]) -> Optional[str]:
    """Why the run's best validation is worse than guessing, or None when it is not (or nothing was validated).

    nth: the best validation accuracy is more than :data:`CHANCE_SE` standard errors below 1/F (a
    model below chance learnt the wrong answer; one at chance is a measured failure to learn, kept);
    sine: the lowest validation MSE is above that of predicting the mean (a model worse than a constant).
    """
    if not history:
        return None
    chance = chance_level(data)
    if data.kind == TaskKind.nth:
        best = max(h["valid_acc"] for h in history)
        n = max(int(data.valid_y.numel()), 1)
        band = CHANCE_SE * math.sqrt(chance * (1 - chance) / n)
        if not best >= chance - band:
            return (f"the best validation accuracy, {best:.3f}, is below chance: a uniform guess over the "
                    f"{data.num_outputs} symbols scores {chance:.3f} (± {band / CHANCE_SE:.3f} on {n} validation "
                    f"examples; this is {CHANCE_SE:g} of those below), so the model learnt a wrong answer")
        return None
    best = min(h["valid_loss"] for h in history)
    if not best <= chance:
        return (f"the lowest validation MSE, {best:.4g}, is worse than always predicting the mean "
                f"(MSE {chance:.4g}), so the model learnt nothing usable")
    return None


def make_optimizer(cfg: Any, params: Any) -> torch.optim.Optimizer:
    """Adam or plain SGD with the configured lr and weight decay."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def fit_task(model: TaskModel, data: TaskData, cfg: Any, seed: int = 0) -> TaskResult:
    """Trains ``model`` on ``data.train`` for ``cfg.max_steps`` mini-batch steps (reshuffled every
    epoch with a generator seeded by ``seed``), validating every ``cfg.eval_every`` steps; the
    best-validation weights are restored and evaluated on train, valid and test.

    Like the LM loop it raises :class:`TrainingDiverged` after too many non-finite steps, and
    :class:`WorseThanChance` when the run ends (budget or early stop) worse than guessing
    (:func:`worse_than_chance`): a run may start there and improve, so only its best counts."""
    optimizer = make_optimizer(cfg, model.parameters())
    params = [p for g in optimizer.param_groups for p in g["params"]]
    gen = torch.Generator().manual_seed(int(seed))
    n = data.train_x.size(0)
    batch = min(int(cfg.batch_size), n)
    res = TaskResult()
    best = (-math.inf if model.kind == TaskKind.nth else math.inf, math.inf)
    best_state = copy.deepcopy(model.state_dict())
    since_best = 0
    order = torch.randperm(n, generator=gen)
    cursor = 0
    while res.steps < cfg.max_steps:
        model.train()
        t0 = time.perf_counter()
        if cursor + batch > n:  # a new epoch: reshuffle (the tail of the old order is dropped)
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor : cursor + batch].to(data.train_x.device)
        cursor += batch
        loss = model.loss(model(data.train_x[idx]), data.train_y[idx])
        loss_value, ok = guarded_step(loss, optimizer, params, cfg.clip)
        res.steps += 1
        res.train_seconds += time.perf_counter() - t0
        if not ok:
            res.skipped += 1
            check_skipped(res.skipped, cfg.max_nonfinite)
        if res.steps % cfg.eval_every == 0 or res.steps == cfg.max_steps:
            v_loss, v_metric = evaluate_task(model, data.valid_x, data.valid_y, cfg.eval_batch_size)
            res.history.append({"step": res.steps, "train_loss": loss_value, "valid_loss": v_loss,
                                f"valid_{data.metric}": v_metric})
            keep, improved = _compare(model.kind, v_metric, best[0], v_loss, best[1])
            if keep:
                best, res.best_step = (v_metric, v_loss), res.steps
                best_state = copy.deepcopy(model.state_dict())
            since_best = 0 if improved else since_best + 1
            reached = cfg.stop_at is not None and (v_metric >= cfg.stop_at if model.kind == TaskKind.nth
                                                   else v_metric <= cfg.stop_at)
            if reached or (cfg.patience is not None and since_best >= cfg.patience):
                res.stopped_early = True
                break
    why = worse_than_chance(data, res.history)
    if why is not None:
        raise WorseThanChance(f"training ended after {res.steps} steps: {why}. Lower train.lr (now {cfg.lr:g}) "
                              f"or train.clip (now {cfg.clip:g}), or set model.state_clip for a searched cell")
    model.load_state_dict(best_state)
    for split in ("train", "valid", "test"):
        loss_v, metric_v = evaluate_task(model, *data.split(split), cfg.eval_batch_size)
        res.metrics[f"{split}_loss"] = loss_v
        res.metrics[f"{split}_{data.metric}"] = metric_v
    return res


def task_model_summary(model: TaskModel) -> dict[str, Any]:
    """Parameter count and core kind of a task model (for metrics.json)."""
    return {"num_params": count_parameters(model), "core_class": type(model.cores[0]).__name__}
