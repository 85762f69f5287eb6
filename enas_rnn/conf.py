"""The app schemas: each app's structured config, assembled from its components' own configs.

Each component's config lives beside the component (``DataConfig`` in ``corpus.py``, ``ModelConfig`` in
``model.py``, ``TrainConfig`` in ``train.py``, a training run's ``TrainRunConfig`` in ``trainrun.py``, ...)
with the rule of every value beside its field (``enas_rnn.rules``); this module composes them into one
schema per app, registers the schemas in Hydra's ConfigStore and says, per app, which keys only take
effect under another setting. The schemas live here, not in the entry scripts, because Hydra's
joblib/submitit launchers pickle classes defined in ``__main__`` by value and break on them
(see ARCHITECTURE.md).

YAML files under ``conf/`` (shipped as package data: ``pkg://enas_rnn.configs``) fill these schemas, so
a typo in a key or a value of the wrong type fails before any work starts; :func:`validate` checks
every value's range and every cross-field rule.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Callable, Optional

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from enas_rnn.comparison import CompareConfig, Sizing, require_cell
from enas_rnn.compress import CompressConfig
from enas_rnn.controller import ControllerConfig
from enas_rnn.corpus import DataConfig
from enas_rnn.errors import ConfigError
from enas_rnn.launch import LauncherConfig
from enas_rnn.model import CoreKind, ModelConfig
from enas_rnn.rules import INT1, NONNEG, OPT_INT1, check_values, fail, rule
from enas_rnn.runs import DEVICE_RULE
from enas_rnn.scores import HiddenCovConfig, MRSConfig
from enas_rnn.screen import ScreenConfig
from enas_rnn.search import SearchConfig
from enas_rnn.searchrun import SearchRunConfig
from enas_rnn.selection import SelectConfig
from enas_rnn.spaces import SpaceConfig
from enas_rnn.summary import SummaryConfig, sanitize_dirname
from enas_rnn.tasks import TaskConfig, TaskTrainConfig
from enas_rnn.train import TrainConfig
from enas_rnn.trainrun import TrainRunConfig

#: The package that holds the YAML configs (conf/ in the source tree, package data in a wheel).
CONFIG_MODULE = "enas_rnn.configs"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"

# The app schemas of the apps whose runs are library objects (one training run, one search, a comparison).
TrainAppConfig = TrainRunConfig
SearchAppConfig = SearchRunConfig
CompareAppConfig = CompareConfig


@dataclass
class ExportAppConfig:
    """`enas-export`: a trained cell as a standalone torch module (<name>.py) + <name>.safetensors."""

    run: Optional[str] = None  # an enas-train, enas-compare or enas-pipeline run folder
    cell: Optional[str] = None  # a genotype (name or JSON path), with checkpoint=
    checkpoint: Optional[str] = None  # a checkpoint file (checkpoints/best.pt of a run)
    out: Optional[str] = None  # output folder; None: <run>/export
    name: Optional[str] = rule(None, (lambda v: v is None or (isinstance(v, str) and v.isidentifier()),
                                      "Python identifiers (the module is imported by that name)"))
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
    cells: int = rule(60, INT1)  # non-degenerate cells drawn from the space (seeded) and trained
    require_memory: bool = True  # what counts as degenerate (as search.require_memory)
    degenerate_scored: bool = True  # score the degenerate cells drawn on the way (reported apart, never trained)
    include_named: bool = True  # also score/train the space's published cell(s) (lstm; enas_paper)
    score_bptt: Optional[int] = rule(None, OPT_INT1)  # rows of the held-out scoring slice (None: data.bptt)
    score_batch: Optional[int] = rule(None, OPT_INT1)  # its columns of the validation stream (None: eval_batch_size)
    search_run: Optional[str] = None  # an enas-search run folder: also report shared-weight perplexity
    shared_batches: int = rule(10, INT1)  # validation windows per cell for the shared-weight perplexity
    keep_checkpoints: bool = False  # keep each trained cell's checkpoints/ (they are ~2 x model size)
    plot: bool = True
    seed: int = 0
    device: str = rule("auto", DEVICE_RULE)
    resume: Optional[str] = None  # a study folder to continue (its finished cells are kept)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    experiment: Optional[str] = None

    @staticmethod
    def cross_check(cfg: Any, key: Callable[[str], str]) -> None:
        if not cfg.variants:
            raise ConfigError(f"{key('variants')}={{}}: the study needs at least one MRS variant (see conf/mrs.yaml)")
        for name in cfg.variants:
            if not str(name).isidentifier():
                raise ConfigError(f"invalid MRS variant name {key('variants')}.{name}: use letters, digits and _")
        if cfg.model.num_layers != 1:
            raise ConfigError(f"the study scores and trains one-layer cell LMs: set {key('model.num_layers')}=1")
        if cfg.train.max_steps is None:
            raise ConfigError(f"set {key('train.max_steps')}: it is each cell's training budget")


@dataclass
class PipelineCompareConfig:
    """The comparison stage of the pipeline (see CompareConfig)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1])
    sizings: list[Sizing] = field(default_factory=lambda: [Sizing.same, Sizing.matched])
    param_tolerance: float = 0.02
    alpha: float = 0.05
    baseline_cache: Optional[str] = None  # share nn.LSTM runs across pipelines (see CompareConfig)
    # The verdict's reference is nn.LSTM; add gru to train nn.GRU beside it (4 more runs with 2 seeds).
    baselines: list[str] = field(default_factory=lambda: ["lstm"])


@dataclass
class PipelineExportConfig:
    """The export stage of the pipeline (see ExportAppConfig)."""

    whole_model: bool = False


@dataclass
class PipelineAppConfig:
    """`enas-pipeline`: search -> selection -> comparison with nn.LSTM -> export, in one folder.

    The search keys are enas-search's (``space``, ``controller``, ``search``, ``screen``) with the
    supernet's language model in ``supernet`` and its SGD in ``shared_train``; ``model`` and ``train``
    describe the retrained models (selection and comparison), as in enas-compare.
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
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    # A finished enas-search run (or an enas-pipeline whose search/ it is) to start from instead of searching:
    # its outputs and supernet are copied into search/ (e.g. several selection strategies on one search).
    search_from: Optional[str] = None
    seed: int = 0
    device: str = rule("auto", DEVICE_RULE)
    resume: Optional[str] = None  # a pipeline folder to continue (finished stages are kept)
    experiment: Optional[str] = None

    @staticmethod
    def cross_check(cfg: Any, key: Callable[[str], str]) -> None:
        if cfg.supernet.num_layers != 1:
            raise ConfigError(f"the search supernet has one recurrent layer: set {key('supernet.num_layers')}=1")
        s = cfg.select
        if s.strategy == "halving" and cfg.train.max_steps is not None and s.min_steps > cfg.train.max_steps:
            raise fail(key("select.min_steps"), s.min_steps,
                       f"an integer <= train.max_steps={cfg.train.max_steps} (the selection's rungs are the first "
                       "steps of the comparison's training runs)")
        if s.strategy == "halving" and cfg.train.max_steps is None:
            raise ConfigError(f"select.strategy=halving needs {key('train.max_steps')} (the last rung's budget is at "
                              "most the comparison's): set train.max_steps, or select.strategy=topk")
        if s.strategy == "topk" and s.k > cfg.search.derive_samples:
            raise ConfigError(f"{key('select.k')}={s.k} exceeds {key('search.derive_samples')}="
                              f"{cfg.search.derive_samples} (the derived cells): raise derive_samples or lower select.k")
        # the comparison stage's own values (named with the pipeline's keys)
        c = cfg.compare
        if not c.seeds or len(set(c.seeds)) != len(c.seeds):
            raise fail(key("compare.seeds"), list(c.seeds), "a non-empty list of distinct integers")
        if not c.sizings:
            raise fail(key("compare.sizings"), [], "a non-empty list of same, matched")
        for name in ("param_tolerance", "alpha"):
            if not 0 < c[name] < 1:
                raise fail(key(f"compare.{name}"), c[name], "a number in (0, 1)")
        kinds = [str(getattr(b, "value", b)) for b in c.baselines]
        if "lstm" not in kinds or any(b not in ("lstm", "gru") for b in kinds) or len(set(kinds)) != len(kinds):
            raise fail(key("compare.baselines"), kinds, "distinct entries of lstm, gru, including lstm")


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
    summary: SummaryConfig = field(default_factory=SummaryConfig)  # the heatmap drawn after a multirun
    device: str = rule("cpu", DEVICE_RULE)  # tiny models: a CPU is faster than a GPU's launch overhead
    resume: Optional[str] = None  # a sweep's multirun folder: its finished jobs are reused
    experiment: Optional[str] = None


@dataclass
class CompressAppConfig:
    """`enas-compress`: prune / share / prune+share a trained model, retrain each variant, table, plot, export."""

    run: str = MISSING  # an enas-train run folder (nn.LSTM or a cell): its checkpoints/best.pt is compressed
    compress: CompressConfig = field(default_factory=CompressConfig)
    # Retraining of every variant through the one LM loop (retrain.max_steps is the budget).
    retrain: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=20.0, epochs=1000, max_steps=200, lr_decay=1.0, eval_every=100, checkpoint_every=None, progress=False))
    batch_size: Optional[int] = rule(None, OPT_INT1)  # retraining batch size; None: the run's data.batch_size
    control: bool = True  # also retrain the uncompressed model for the same budget
    export: str = "best"  # best | none | a variant name (e.g. prune50, share16, prune80_share16)
    export_tolerance: float = rule(0.05, NONNEG)  # best: the smallest variant within this share of the original's ppl
    export_whole_model: bool = True  # the compressed embedding and decoder too (an LM class), not only the cores
    plot: bool = True
    seed: int = 0
    device: str = rule("auto", DEVICE_RULE)
    resume: Optional[str] = None  # a compression folder to continue (its finished variants are kept)
    experiment: Optional[str] = None


#: Every app: (console command, schema, primary config name).
APP_SCHEMAS: dict[str, tuple[type, str]] = {
    "enas-train": (TrainAppConfig, "train"), "enas-search": (SearchAppConfig, "search"),
    "enas-compare": (CompareAppConfig, "compare"), "enas-export": (ExportAppConfig, "export"),
    "enas-mrs": (MRSAppConfig, "mrs"), "enas-pipeline": (PipelineAppConfig, "pipeline"),
    "enas-sweep": (SweepAppConfig, "sweep"), "enas-compress": (CompressAppConfig, "compress"),
}

# Keys that only take effect under another setting: (key prefix, does it take effect?, what enables it).
_IS_CELL = (lambda c: CoreKind(c.model.core) == CoreKind.cell, "model=cell (model.core=cell)")
_ENAS = (lambda c: c.search.strategy == "enas", "search=enas (search.strategy=enas)")
_SCREEN = (lambda c: c.screen.name != "none", "screen=mrs or screen=hidden_cov")


def _search_rules() -> list[tuple[str, Callable[[Any], bool], str]]:
    return [
        ("controller.", *_ENAS), ("search.entropy_weight", *_ENAS), ("search.baseline_decay", *_ENAS),
        ("search.controller_lr", *_ENAS), ("search.controller_clip", *_ENAS),
        ("screen.mrs.", lambda c: c.screen.name == "mrs", "screen=mrs"),
        ("screen.hidden_cov.", lambda c: c.screen.name == "hidden_cov", "screen=hidden_cov"),
        ("screen.candidates", *_SCREEN), ("screen.keep", *_SCREEN), ("screen.screened_reward", *_SCREEN),
        ("screen.bptt", *_SCREEN), ("screen.batch", *_SCREEN), ("screen.pool", *_SCREEN),
        ("search.degenerate_reward", lambda c: c.search.degenerate == "penalty"
         or str(c.search.get("unbounded", "off")) == "penalty", "search.degenerate=penalty or search.unbounded=penalty"),
        ("search.time_budget_clock", lambda c: c.search.time_budget_s is not None, "search.time_budget_s=<seconds>"),
        ("search.require_memory", lambda c: c.search.degenerate != "off", "search.degenerate=mask|penalty|resample"),
    ]


_LAUNCH = [("launcher.jobs", lambda c: c.launcher.name in ("local", "slurm"), "launcher=local or launcher=slurm"),
           ("launcher.slurm.", lambda c: c.launcher.name == "slurm", "launcher=slurm")]
_HALVING = (lambda c: c.select.strategy == "halving", "select.strategy=halving")
_TOPK = (lambda c: c.select.strategy == "topk", "select.strategy=topk")

NO_EFFECT: dict[str, list[tuple[str, Callable[[Any], bool], str]]] = {
    "enas-train": [("cell", *_IS_CELL), ("model.dropout_h", *_IS_CELL), ("model.state_clip", *_IS_CELL)],
    "enas-search": _search_rules(),
    "enas-pipeline": _search_rules() + _LAUNCH + [
        ("select.candidates", *_HALVING), ("select.min_steps", *_HALVING), ("select.eta", *_HALVING),
        ("select.prescreen", *_HALVING), ("select.audit", *_HALVING), ("select.references", *_HALVING),
        ("select.k", *_TOPK), ("select.max_steps", *_TOPK), ("select.eval_batches", *_TOPK)],
    "enas-compare": [],
    "enas-mrs": _LAUNCH,
    "enas-sweep": [("cell", *_IS_CELL)],
    "enas-compress": [],
    "enas-export": [("cell", lambda c: c.checkpoint is not None, "checkpoint=<file>")],
}


def validate(cfg: Any, app: str, overrides: Optional[list[str]] = None) -> None:
    """Every value of an app's config against its rule, the cross-field rules, and - for the keys the
    command line set - whether each takes effect in this configuration (else the key that enables it)."""
    schema, _ = APP_SCHEMAS[app]
    check_values(cfg, schema)
    if app == "enas-compare":
        require_cell(cfg)
    for o in overrides or ():
        key = o.partition("=")[0].lstrip("+~")
        for prefix, effective, hint in NO_EFFECT.get(app, []):
            hit = key == prefix.rstrip(".") or (prefix.endswith(".") and key.startswith(prefix))
            if hit and not effective(cfg):
                raise ConfigError(f"{key}= has no effect in this configuration: it needs {hint}; drop {key}= or set "
                                  "that too")


# ---------------------------------------------------------------------------------------------- presets
def _options(group: str) -> list[str]:
    folder = resources.files(CONFIG_MODULE).joinpath(group)
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml") and p.name != "none.yaml")


#: Which preset groups an app reads (conf/<group>/<name>.yaml); the shared LM presets serve every app that
#: trains a language model.
PRESET_GROUPS: dict[str, tuple[str, ...]] = {
    "enas-train": ("lm_experiment", "train_experiment"), "enas-search": ("lm_experiment", "search_experiment"),
    "enas-compare": ("lm_experiment", "compare_experiment"), "enas-mrs": ("lm_experiment", "mrs_experiment"),
    "enas-pipeline": ("lm_experiment", "pipeline_experiment"), "enas-sweep": ("sweep_experiment",),
    "enas-compress": ("compress_experiment",), "enas-export": (),
}


def presets(app: str) -> list[str]:
    """The names ``experiment=`` accepts for an app (its own presets and the shared LM presets it reads)."""
    return sorted({name for g in PRESET_GROUPS[app] for name in _options(g)})


def check_preset(app: str, name: Optional[str]) -> None:
    """A clear line for a preset the app does not have (Hydra would silently apply none of it)."""
    if name in (None, "none"):
        return
    valid = presets(app)
    if not valid:
        raise ConfigError(f"{app} has no presets (experiment={name}): it needs none, since it reads everything from "
                          "the run it works on; drop experiment=")
    if name not in valid:
        raise ConfigError(f"experiment={name} is not a preset of {app}: valid presets are {', '.join(valid)}")


# ---------------------------------------------------------------------------------------------- registration
def _run_dir(resume: Any, default: str) -> str:
    """hydra.run.dir / hydra.sweep.dir: the folder to resume when ``resume=`` is given, else the default."""
    return str(resume) if resume not in (None, "", "None") else default


def register_configs() -> None:
    """Registers the schemas (YAML files in conf/ name them in their defaults lists) and the resolvers."""
    cs = ConfigStore.instance()
    for schema, name in APP_SCHEMAS.values():
        cs.store(name=f"{name}_schema", node=schema)
    OmegaConf.register_new_resolver("enas_run_dir", _run_dir, replace=True)
    OmegaConf.register_new_resolver("enas_dirname", sanitize_dirname, replace=True)
    OmegaConf.register_new_resolver("enas_now", lambda fmt: _dt.datetime.now().strftime(fmt), replace=True)


def compose_app(config_name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The composed config of an app (``train``, ``search``, ...) with overrides, as its command line would
    make it (for tests, benches and scripts that call the library directly)."""
    register_configs()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


__all__ = [
    "compose_app",
    "TrainAppConfig", "SearchAppConfig", "CompareAppConfig", "ExportAppConfig", "MRSAppConfig", "PipelineAppConfig",
    "SweepAppConfig", "CompressAppConfig", "APP_SCHEMAS", "NO_EFFECT", "validate", "presets", "check_preset",
    "register_configs", "CONFIG_PATH", "CONFIG_MODULE", "MISSING",
]
