"""The app schemas: each app's structured config, assembled from its components' own configs.

Each component's config lives beside the component (``DataConfig`` in ``corpus.py``,
``ModelConfig`` in ``model.py``, ``TrainConfig`` in ``train.py``, ...); this module only composes
them into one schema per app and registers the schemas in Hydra's ConfigStore. They live here, not
in the entry scripts, because Hydra's joblib/submitit launchers pickle classes defined in
``__main__`` by value and break on them (see ARCHITECTURE.md).

YAML files under ``conf/`` fill these schemas, so a typo in a key or a value of the wrong type
fails before any work starts. Value checks that types cannot express (ranges, choices written as
strings) are the ``validate_*`` functions, run by every app before any work.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from enas_rnn.compress import CompressConfig
from enas_rnn.controller import ControllerConfig
from enas_rnn.corpus import DataConfig
from enas_rnn.errors import ConfigError
from enas_rnn.model import ModelConfig
from enas_rnn.scores import SCORES, HiddenCovConfig, MRSConfig
from enas_rnn.scores.mrs import DISTRIBUTIONS, ERRORS, THRESHOLD_MODES
from enas_rnn.screen import SCREENED_REWARDS, ScreenConfig
from enas_rnn.search import DEGENERATE_MODES, UNBOUNDED_MODES, SearchConfig
from enas_rnn.spaces import SPACES, TEMPLATES, SpaceConfig
from enas_rnn.strategies import STRATEGIES
from enas_rnn.summary import SummaryConfig
from enas_rnn.tasks import TaskConfig, TaskTrainConfig
from enas_rnn.train import TrainConfig


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


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# Rules: (key, test, the valid values in words). Every value of every app is checked before any work.
_INT1 = (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
_INT0 = (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0")
_OPT_INT1 = (lambda v: v is None or (isinstance(v, int) and v >= 1), "an integer >= 1 or null")
_POS = (lambda v: _num(v) and v > 0, "a finite number > 0")
_NONNEG = (lambda v: _num(v) and v >= 0, "a finite number >= 0")
_FINITE = (lambda v: _num(v), "a finite number")
_OPT_POS = (lambda v: v is None or (_num(v) and v > 0), "a finite number > 0 or null")
_DROPOUT = (lambda v: _num(v) and 0.0 <= v < 1.0, "a number in [0, 1)")

RULES: dict[str, list[tuple[str, Any, str]]] = {
    "data": [(k, *_INT1) for k in ("batch_size", "eval_batch_size", "test_batch_size", "bptt")],
    "model": [(k, *_INT1) for k in ("emb_size", "hidden_size", "num_layers")]
    + [(k, *_DROPOUT) for k in ("dropout_emb", "dropout_in", "dropout_out", "dropout_h")]
    + [("init_range", *_OPT_POS), ("state_clip", *_OPT_POS)],
    "train": [("lr", *_POS), ("clip", *_POS), ("weight_decay", *_NONNEG), ("epochs", *_INT1), ("decay_start", *_INT0),
              ("lr_decay", lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"), ("max_nonfinite", *_INT0),
              ("log_every", *_INT1)]
    + [(k, *_OPT_INT1) for k in ("max_steps", "eval_every", "eval_batches", "checkpoint_every")],
    "space": [("name", lambda v: v in SPACES, "one of " + ", ".join(sorted(SPACES))),
              ("num_nodes", lambda v: isinstance(v, int) and 1 <= v <= 64, "an integer in [1, 64]"),
              ("template", lambda v: v in TEMPLATES, "one of " + ", ".join(TEMPLATES))],
    "controller": [("hidden_size", *_INT1), ("temperature", *_POS), ("tanh_constant", *_NONNEG), ("init_range", *_POS)],
    "search": [("strategy", lambda v: v in STRATEGIES, "one of " + ", ".join(STRATEGIES)),
               ("epochs", *_INT1), ("shared_steps", *_OPT_INT1), ("controller_steps", *_INT0),
               ("children_per_step", *_INT1), ("reward_c", *_POS), ("reward_batches", *_INT1),
               ("entropy_weight", *_NONNEG), ("baseline_decay", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
               ("controller_lr", *_POS), ("controller_clip", *_OPT_POS), ("nonfinite_reward", *_FINITE),
               ("degenerate", lambda v: v in DEGENERATE_MODES, "one of " + ", ".join(DEGENERATE_MODES)),
               ("unbounded", lambda v: v in UNBOUNDED_MODES, "one of " + ", ".join(UNBOUNDED_MODES)),
               ("degenerate_reward", *_FINITE), ("derive_samples", *_INT1), ("derive_batches", *_INT1),
               ("derive_rerank", *_INT0), ("derive_rerank_batches", *_INT0), ("top_k", *_INT1),
               ("time_budget_s", *_OPT_POS),
               ("time_budget_clock", lambda v: v in ("wall", "process"), "wall or process")],
    "screen": [("name", lambda v: v == "none" or v in SCORES, "none or one of " + ", ".join(sorted(SCORES))),
               ("candidates", *_INT1), ("keep", *_INT1),
               ("screened_reward", lambda v: v in SCREENED_REWARDS, "one of " + ", ".join(SCREENED_REWARDS)),
               ("bptt", *_OPT_INT1), ("batch", *_OPT_INT1), ("pool", *_INT0)],
    "mrs": [("samples", *_INT1), ("dist", lambda v: v in DISTRIBUTIONS, "one of " + ", ".join(DISTRIBUTIONS)),
            ("scale", *_POS), ("error", lambda v: v in ERRORS, "one of " + ", ".join(sorted(ERRORS))),
            ("lo", *_FINITE), ("hi", *_OPT_POS), ("threshold", *_FINITE),
            ("threshold_mode", lambda v: v in THRESHOLD_MODES, "one of " + ", ".join(THRESHOLD_MODES)),
            ("quantile", lambda v: _num(v) and 0 < v < 1, "a number in (0, 1)"), ("floor", *_NONNEG)],
    "hidden_cov": [("k", *_POS)],
}


def check_section(section: Any, prefix: str, rules: str) -> None:
    """Checks one config section (e.g. ``cfg.train``) against ``RULES[rules]``; the key is named with ``prefix``."""
    for key, test, valid in RULES[rules]:
        if key in section:
            _check(bool(test(section[key])), f"{prefix}.{key}", section[key], valid)


def validate_common(cfg: Any) -> None:
    """Checks the values shared by every app; raises ConfigError naming key and valid options."""
    if "device" in cfg:
        _check(bool(_DEVICE_RE.match(str(cfg.device))), "device", cfg.device, "auto, cpu, cuda, cuda:N")
    for section in ("data", "model", "train"):
        if section in cfg:
            check_section(cfg[section], section, section)
    if "model" in cfg:
        m = cfg.model
        if m.tie_weights and m.emb_size != m.hidden_size:
            raise ConfigError(
                f"model.tie_weights=true needs model.emb_size == model.hidden_size "
                f"(got {m.emb_size} and {m.hidden_size}): set both to one value or model.tie_weights=false"
            )


def validate_search(cfg: Any) -> None:
    """Value checks of the search app (types are checked by the schema)."""
    validate_common(cfg)
    for section in ("space", "controller", "search", "screen"):
        check_section(cfg[section], section, section)
    check_section(cfg.screen.mrs, "screen.mrs", "mrs")
    check_section(cfg.screen.hidden_cov, "screen.hidden_cov", "hidden_cov")
    if cfg.model.num_layers != 1:
        raise ConfigError("the search supernet has one recurrent layer: set model.num_layers=1")
    sc = cfg.screen
    if sc.name != "none" and not 1 <= sc.keep <= sc.candidates:
        raise ConfigError(f"screen.keep={sc.keep} must be between 1 and screen.candidates={sc.candidates}")


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
    # Baselines trained beside the cells: lstm (torch.nn.LSTM, the reference; required) and gru (torch.nn.GRU,
    # same and parameter-matched sizes like a cell, Welch-tested against nn.LSTM).
    baselines: list[str] = field(default_factory=lambda: ["lstm", "gru"])
    # A folder shared by several comparisons: nn.LSTM runs with identical settings are trained once
    # there and reused (e.g. by the pipelines of a study); None keeps them inside the comparison.
    baseline_cache: Optional[str] = None
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


def _mrs_variants() -> dict[str, MRSConfig]:
    return {"paper": MRSConfig(samples=30, dist="normal", error="ce", threshold_mode="quantile", quantile=0.1)}


@dataclass
class MRSAppConfig:
    """`enas-mrs`: do training-free scores (MRS variants, hidden covariance) predict trained perplexity?

    Draws cells of ``space`` until ``cells`` are not degenerate, scores each with every MRS variant and
    hidden covariance, trains each from scratch for ``train.max_steps`` steps with the one loop, and
    correlates scores with perplexities; the degenerate cells drawn on the way are scored only.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # the trained (and scored) LM; one layer
    train: TrainConfig = field(default_factory=TrainConfig)  # train.max_steps is the per-cell budget
    space: SpaceConfig = field(default_factory=SpaceConfig)
    variants: dict[str, MRSConfig] = field(default_factory=_mrs_variants)  # name -> MRS settings (conf/mrs.yaml)
    hidden_cov: HiddenCovConfig = field(default_factory=HiddenCovConfig)
    cells: int = 60  # non-degenerate cells drawn from the space (seeded) and trained
    require_memory: bool = True  # what counts as degenerate (as search.require_memory)
    degenerate_scored: bool = True  # score the degenerate cells drawn on the way (reported apart, never trained)
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


@dataclass
class SelectConfig:
    """The pipeline's final choice: the search's top cells retrained from scratch for a short budget
    (the practice of DARTS and of random search with weight sharing, Li & Talwalkar 2019)."""

    k: int = 3  # cells of the derived ranking (top_genotypes.json) retrained
    max_steps: int = 500  # from-scratch budget per cell (train.* settings otherwise)
    eval_batches: Optional[int] = None  # validation windows of the choice; None: the whole split


@dataclass
class PipelineCompareConfig:
    """The comparison stage of the pipeline (see CompareAppConfig)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1])
    sizings: list[Sizing] = field(default_factory=lambda: [Sizing.same, Sizing.matched])
    param_tolerance: float = 0.02
    alpha: float = 0.05
    baseline_cache: Optional[str] = None  # share nn.LSTM runs across pipelines (see CompareAppConfig)
    # The verdict's reference is nn.LSTM; add gru to train nn.GRU beside it (4 more runs with 2 seeds).
    baselines: list[str] = field(default_factory=lambda: ["lstm"])


@dataclass
class PipelineExportConfig:
    """The export stage of the pipeline (see ExportAppConfig)."""

    whole_model: bool = False


@dataclass
class PipelineAppConfig:
    """`enas-pipeline`: search -> shortlist retraining -> comparison with nn.LSTM -> export, in one folder.

    The search keys are enas-search's (``space``, ``controller``, ``search``, ``screen``) with the
    supernet's language model in ``supernet`` and its SGD in ``shared_train``; ``model`` and ``train``
    describe the retrained models (shortlist and comparison), as in enas-compare.
    """

    data: DataConfig = field(default_factory=DataConfig)
    supernet: ModelConfig = field(default_factory=ModelConfig)
    shared_train: TrainConfig = field(default_factory=TrainConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    compare: PipelineCompareConfig = field(default_factory=PipelineCompareConfig)
    export: PipelineExportConfig = field(default_factory=PipelineExportConfig)
    seed: int = 0
    device: str = "auto"
    resume: Optional[str] = None  # a pipeline folder to continue (finished stages are kept)
    experiment: Optional[str] = None


@dataclass
class SweepAppConfig:
    """`enas-sweep`: one synthetic-task training run (a job of a Hydra multirun) -> metrics.json.

    ``model.core`` picks nn.LSTM / nn.GRU / a cell (``cell=``); the ``core`` config group sets both.
    """

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(emb_size=16, hidden_size=16, num_layers=1,
                                                                   tie_weights=False))
    train: TaskTrainConfig = field(default_factory=TaskTrainConfig)
    cell: str = "lstm"  # with model.core=cell: a named genotype or a path to genotype.json
    seed: int = 0  # the model's initialisation and batch order (the data's is task.seed)
    name: str = "default"  # the multirun folder: multirun/sweep/<name>; a rerun with the same name resumes
    summary: SummaryConfig = field(default_factory=SummaryConfig)  # the heatmap drawn after a multirun
    device: str = "cpu"  # tiny models: a CPU is faster than a GPU's launch overhead
    experiment: Optional[str] = None


@dataclass
class CompressAppConfig:
    """`enas-compress`: prune / share / prune+share a trained model, retrain each variant, table, plot, export."""

    run: str = MISSING  # an enas-train run folder (nn.LSTM or a cell): its checkpoints/best.pt is compressed
    compress: CompressConfig = field(default_factory=CompressConfig)
    # Retraining of every variant through the one LM loop (train.max_steps is the budget).
    retrain: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=20.0, epochs=1000, max_steps=200, lr_decay=1.0, eval_every=100, checkpoint_every=None, progress=False))
    batch_size: Optional[int] = None  # retraining batch size; None: the run's data.batch_size
    control: bool = True  # also retrain the uncompressed model for the same budget
    export: str = "best"  # best | none | a variant name (e.g. prune50, share16, prune80_share16)
    export_tolerance: float = 0.05  # best: the smallest variant whose valid ppl is within this share of the original's
    export_whole_model: bool = True  # the compressed embedding and decoder too (an LM class), not only the cores
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
    cs.store(name="pipeline_schema", node=PipelineAppConfig)
    cs.store(name="sweep_schema", node=SweepAppConfig)
    cs.store(name="compress_schema", node=CompressAppConfig)


__all__ = [
    "TrainAppConfig",
    "SearchAppConfig",
    "validate_common",
    "validate_search",
    "register_configs",
    "MISSING",
]
