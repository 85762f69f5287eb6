"""Structured configs (typed schemas) for every app, registered in Hydra's ConfigStore.

They live here, not in the entry scripts, because Hydra's joblib/submitit launchers pickle
classes defined in ``__main__`` by value and break on them (see ARCHITECTURE.md).

Each component gets its own small dataclass; the apps compose them. YAML files under ``conf/``
fill these schemas, so a typo in a key or a value of the wrong type fails before any work
starts. Value checks that types cannot express (ranges, choices written as strings) are in
:func:`validate_common`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from enas_rnn.controller import ControllerConfig
from enas_rnn.errors import ConfigError
from enas_rnn.mrs import HiddenCovConfig, MRSConfig
from enas_rnn.search import ScreenConfig, SearchConfig
from enas_rnn.spaces import SpaceConfig


class CoreKind(str, Enum):
    """Which recurrent core the language model uses."""

    lstm = "lstm"  # torch.nn.LSTM, the vanilla baseline
    cell = "cell"  # a genotype executed by enas_rnn.cells.FixedCell


@dataclass
class DataConfig:
    """Where the corpus lives and how it is cut into batches."""

    name: str = "ptb"
    # None: $ENAS_RNN_DATA/<name>, then ./data/<name>
    root: Optional[str] = None
    download: bool = False  # fetch PTB from its public source when the files are missing
    batch_size: int = 20
    eval_batch_size: int = 10
    test_batch_size: int = 1
    bptt: int = 35
    # ENAS / AWD-LSTM random BPTT length with lr scaled by seq_len / bptt (Merity et al. 2018, 4.1)
    variable_bptt: bool = False


@dataclass
class ModelConfig:
    """RNNLM: embedding -> recurrent core (one per layer) -> decoder."""

    core: CoreKind = CoreKind.lstm
    emb_size: int = 200
    hidden_size: int = 200
    num_layers: int = 1
    tie_weights: bool = True  # Press & Wolf 2017; Inan et al. 2017; needs emb_size == hidden_size
    dropout_emb: float = 0.0  # drops whole words of the embedding matrix (Gal & Ghahramani 2016)
    dropout_in: float = 0.0  # locked dropout on the embeddings
    dropout_out: float = 0.0  # locked dropout on every layer's output
    dropout_h: float = 0.0  # variational dropout on h_{t-1} inside searched cells (ENAS); nn.LSTM ignores it
    init_range: Optional[float] = None  # uniform(-r, r) for every weight (Zaremba et al. 2014 use 0.05)
    state_clip: Optional[float] = 25.0  # searched cells only: clamp unbounded operands to ±clip (see cells.py)


@dataclass
class TrainConfig:
    """The one LM loop: SGD, clipping, BPTT, lr decay, fault handling, checkpoints."""

    lr: float = 20.0
    epochs: int = 6
    max_steps: Optional[int] = None  # stop after this many optimiser steps (a budget)
    clip: float = 0.25
    weight_decay: float = 0.0
    lr_decay: float = 1.0  # lr *= lr_decay after every epoch >= decay_start (Zaremba et al. 2014)
    decay_start: int = 1
    max_nonfinite: int = 20  # skipped non-finite steps tolerated before the run stops
    log_every: int = 50  # steps between TensorBoard train scalars
    eval_every: Optional[int] = None  # steps between mid-epoch validations (learning curves); None: per epoch
    eval_batches: Optional[int] = None  # cap on validation windows (fast presets); None: the whole split
    checkpoint_every: Optional[int] = 200  # steps between mid-epoch checkpoints; one is always written per epoch
    progress: bool = True  # tqdm progress bar


@dataclass
class TrainAppConfig:
    """`enas-train`: train a language model from scratch and report its perplexity."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cell: str = "lstm"  # with model.core=cell: a named genotype or a path to genotype.json
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: Optional[str] = None  # a run folder to continue from its last checkpoint
    experiment: Optional[str] = None  # name of the preset, for the record


@dataclass
class SearchAppConfig:
    """`enas-search`: ENAS or random search with weight sharing on PTB."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # sizes/dropouts of the supernet LM
    train: TrainConfig = field(default_factory=TrainConfig)  # SGD on the shared weights
    space: SpaceConfig = field(default_factory=SpaceConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    seed: int = 0
    device: str = "auto"
    resume: Optional[str] = None
    experiment: Optional[str] = None


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")


def _check(cond: bool, key: str, value: Any, valid: str) -> None:
    if not cond:
        raise ConfigError(f"invalid config value {key}={value!r}: valid values are {valid}")


def validate_common(cfg: Any) -> None:
    """Checks the values shared by every app; raises ConfigError naming key and valid options."""
    if "device" in cfg:
        _check(bool(_DEVICE_RE.match(str(cfg.device))), "device", cfg.device, "auto, cpu, cuda, cuda:N")
    if "data" in cfg:
        d = cfg.data
        for key in ("batch_size", "eval_batch_size", "test_batch_size", "bptt"):
            _check(d[key] >= 1, f"data.{key}", d[key], "an integer >= 1")
    if "model" in cfg:
        m = cfg.model
        for key in ("emb_size", "hidden_size", "num_layers"):
            _check(m[key] >= 1, f"model.{key}", m[key], "an integer >= 1")
        for key in ("dropout_emb", "dropout_in", "dropout_out", "dropout_h"):
            _check(0.0 <= m[key] < 1.0, f"model.{key}", m[key], "a float in [0, 1)")
        if m.tie_weights and m.emb_size != m.hidden_size:
            raise ConfigError(
                f"model.tie_weights=true needs model.emb_size == model.hidden_size "
                f"(got {m.emb_size} and {m.hidden_size}): set both to one value or model.tie_weights=false"
            )
        if m.state_clip is not None:
            _check(m.state_clip > 0, "model.state_clip", m.state_clip, "a positive float or null")
    if "train" in cfg:
        t = cfg.train
        _check(t.lr > 0, "train.lr", t.lr, "a float > 0")
        _check(t.clip > 0, "train.clip", t.clip, "a float > 0")
        _check(0 < t.lr_decay <= 1, "train.lr_decay", t.lr_decay, "a float in (0, 1]")
        _check(t.epochs >= 1, "train.epochs", t.epochs, "an integer >= 1")
        _check(t.max_nonfinite >= 0, "train.max_nonfinite", t.max_nonfinite, "an integer >= 0")
        for key in ("max_steps", "eval_every", "eval_batches", "checkpoint_every"):
            if t[key] is not None:
                _check(t[key] >= 1, f"train.{key}", t[key], "an integer >= 1 or null")


class Sizing(str, Enum):
    """How `enas-compare` sizes a cell against the nn.LSTM baseline."""

    same = "same"  # the configured model.hidden_size
    matched = "matched"  # hidden size searched so total parameters match the baseline's


@dataclass
class CompareAppConfig:
    """`enas-compare`: retrain a cell and nn.LSTM under one budget, several seeds, two sizings."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # shared by every run; model.core is set per run
    train: TrainConfig = field(default_factory=TrainConfig)
    cell: str = MISSING  # a named genotype or a path to genotype.json
    extra_cells: list[str] = field(default_factory=list)  # more cells compared the same way
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    sizings: list[Sizing] = field(default_factory=lambda: [Sizing.same, Sizing.matched])
    param_tolerance: float = 0.02  # |params_cell / params_lstm - 1| allowed for the matched sizing
    alpha: float = 0.05  # significance level of the Welch t-test in the verdict
    plot: bool = True  # learning_curves.png
    device: str = "auto"
    experiment: Optional[str] = None


@dataclass
class ExportAppConfig:
    """`enas-export`: a trained cell as a standalone torch module (<name>.py) + <name>.safetensors."""

    run: Optional[str] = None  # an enas-train or enas-compare run folder
    cell: Optional[str] = None  # a genotype (name or JSON path), with checkpoint=
    checkpoint: Optional[str] = None  # a checkpoint file (checkpoints/best.pt of a run)
    out: Optional[str] = None  # output folder; None: the Hydra run folder
    name: Optional[str] = None  # module/file name; None: derived from the cell
    whole_model: bool = False  # also export embedding + decoder as an `LM` class


@dataclass
class MRSAppConfig:
    """`enas-mrs`: do training-free scores (MRS, hidden covariance) predict trained perplexity?

    Samples ``cells`` cells of ``space``, scores each, trains each from scratch for
    ``train.max_steps`` steps with the one loop, and correlates scores with perplexities.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # the trained (and scored) LM; one layer
    train: TrainConfig = field(default_factory=TrainConfig)  # train.max_steps is the per-cell budget
    space: SpaceConfig = field(default_factory=SpaceConfig)
    mrs: MRSConfig = field(
        default_factory=lambda: MRSConfig(samples=30, error="ce", threshold_mode="quantile", quantile=0.1)
    )
    hidden_cov: HiddenCovConfig = field(default_factory=HiddenCovConfig)
    cells: int = 20  # M distinct cells sampled from the space (seeded)
    include_named: bool = True  # also score/train the space's published cell(s) (lstm; enas_paper)
    score_bptt: Optional[int] = None  # rows of the held-out scoring slice (None: data.bptt)
    score_batch: Optional[int] = None  # its columns of the validation stream (None: data.eval_batch_size)
    search_run: Optional[str] = None  # an enas-search run folder: also report shared-weight perplexity
    shared_batches: int = 10  # validation windows per cell for the shared-weight perplexity
    keep_checkpoints: bool = False  # keep each trained cell's checkpoints/ (they are ~2 x model size)
    plot: bool = True
    seed: int = 0
    device: str = "auto"
    experiment: Optional[str] = None


def register_configs() -> None:
    """Registers the schemas; YAML files in conf/ name them in their defaults lists."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainAppConfig)
    cs.store(name="search_schema", node=SearchAppConfig)
    cs.store(name="compare_schema", node=CompareAppConfig)
    cs.store(name="export_schema", node=ExportAppConfig)
    cs.store(name="mrs_schema", node=MRSAppConfig)


__all__ = [
    "CoreKind",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "TrainAppConfig",
    "SearchAppConfig",
    "validate_common",
    "register_configs",
    "MISSING",
]
