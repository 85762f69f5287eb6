"""One weight-sharing search in its folder (``enas_rnn.search.SearchRun``), fresh, resumed or read back.

The search app and the pipeline's search stage run searches through :func:`run_search`; the folder is
claimed through :class:`enas_rnn.runfolder.RunFolder` (its ``run.json`` records the config), so a search
interrupted before its first checkpoint starts over cleanly on ``resume=``, and a finished one is read
back, never redone.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from enas_rnn.checkpoint import LAST, checkpoint_dir, load_resumable
from enas_rnn.controller import ControllerConfig
from enas_rnn.corpus import DataConfig
from enas_rnn.errors import CheckpointError, ConfigError
from enas_rnn.model import ModelConfig
from enas_rnn.rules import check_values, rule
from enas_rnn.runfolder import Claim, RunFolder, identity_of, resumed_config
from enas_rnn.runs import DEVICE_RULE
from enas_rnn.screen import ScreenConfig
from enas_rnn.search import Hook, SearchConfig, SearchRun
from enas_rnn.spaces import SpaceConfig
from enas_rnn.train import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["SearchRunConfig", "run_search", "search_job", "restore_search_config", "search_outputs", "copy_search", "APP"]

APP = "enas-search"
#: What a finished search leaves for the stages after it (the shortlist, the supernet, the record).
OUTPUTS = ("metrics.json", "best_genotype.json", "top_genotypes.json", "derived.json", "search_history.jsonl")


@dataclass
class SearchRunConfig:
    """One search (the `enas-search` schema): the supernet's LM and SGD, the space, controller, loop, screen."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # sizes/dropouts of the supernet LM
    train: TrainConfig = field(default_factory=TrainConfig)  # SGD on the shared weights
    space: SpaceConfig = field(default_factory=SpaceConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    seed: int = 0
    device: str = rule("auto", DEVICE_RULE)
    resume: Optional[str] = None
    experiment: Optional[str] = None

    @staticmethod
    def cross_check(cfg: Any, key: Callable[[str], str]) -> None:
        if cfg.model.num_layers != 1:
            raise ConfigError(f"the search supernet has one recurrent layer: set {key('model.num_layers')}=1")


def restore_search_config(record: Mapping[str, Any]) -> DictConfig:
    """A search's config from its run.json identity (typed like a fresh config)."""
    return OmegaConf.merge(OmegaConf.structured(SearchRunConfig), dict(record["identity"]))


def _checkpoint(folder: Path) -> Optional[dict]:
    ckpts = checkpoint_dir(folder)
    if not (ckpts / LAST).is_file() and not (ckpts / LAST).with_name("last.prev.pt").is_file():
        return None
    payload = load_resumable(folder)
    if "search" not in payload:
        raise CheckpointError(f"{folder} is not an enas-search run (its checkpoint holds no search state): "
                              f"continue a training run with enas-train resume={folder}")
    return payload


def run_search(cfg: DictConfig, folder: str | Path, *, mode: str = "job", hook: Optional[Hook] = None,
               overrides: Sequence[str] = (), log_file: Optional[str] = "search.log",
               hydra_record: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """Runs (or continues, or reads back) a search in ``folder`` and derives the best cells; returns the metrics.

    ``mode`` as in :func:`enas_rnn.trainrun.train_lm`: ``new``, ``resume`` (the folder's own config counts;
    ``cfg`` supplies the device and the progress bar) or ``job``.
    """
    if cfg.get("resume") and mode == "job":  # a config that names the run to continue
        mode, folder = "resume", cfg.resume
    folder = Path(folder)
    run = RunFolder(folder, APP)
    if mode == "resume":
        cfg, _ = resumed_config(run, SearchRunConfig, cfg, overrides, ("device", "train.progress"))
    check_values(cfg, SearchRunConfig)
    with run.session(identity_of(cfg), mode, log_file=log_file, hydra_record=hydra_record) as claim:
        if claim == Claim.reuse:
            log.info("nothing to do: %s holds a finished search (read back, nothing changed)", folder)
            return search_outputs(folder)["metrics"]
        payload = _checkpoint(folder)
        if payload is None and (folder / "tb").exists():
            shutil.rmtree(folder / "tb")  # interrupted before its first checkpoint: start over cleanly
        metrics = SearchRun(cfg, folder, payload, hook, overrides).run()
        run.finish()
        log.info("done: best cell %s, shared-weight ppl %.1f; wrote %s", metrics["best_hash"], metrics["best_ppl"],
                 folder / "best_genotype.json")
        return metrics


def search_outputs(folder: str | Path) -> dict[str, Any]:
    """What a finished search folder hands on: metrics, the derived ranking (best first) and its config.

    A folder that does not hold a finished search is a ConfigError naming what is missing."""
    folder = Path(folder)
    rec = RunFolder(folder, APP).record()
    missing = [name for name in ("metrics.json", "top_genotypes.json") if not (folder / name).is_file()]
    if rec is None or rec.get("app") != APP or rec.get("status") != "finished" or missing:
        what = ("no enas-search run" if rec is None or rec.get("app") != APP
                else f"an unfinished search (status {rec.get('status')})" if rec.get("status") != "finished"
                else "a search without " + ", ".join(missing))
        raise ConfigError(f"{folder} holds {what}: pass the folder of a finished enas-search run (or of an "
                          "enas-pipeline, whose search/ it is)")
    derived = folder / "derived.json"
    ranking = json.loads((derived if derived.is_file() else folder / "top_genotypes.json").read_text())
    return {"metrics": json.loads((folder / "metrics.json").read_text()), "ranking": ranking,
            "config": restore_search_config(rec)}


def copy_search(source: str | Path, dest: str | Path) -> None:
    """Copies a finished search's folder (outputs, run.json, checkpoints; not TensorBoard) into ``dest``."""
    source, dest = Path(source), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in (*OUTPUTS, "run.json", "best_genotype.png"):
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)
    if checkpoint_dir(source).is_dir():
        shutil.copytree(checkpoint_dir(source), checkpoint_dir(dest), dirs_exist_ok=True)


def search_job(config: dict, folder: str) -> dict[str, Any]:
    """A search as an executor job (plain arguments, so it pickles to another process): fresh, resumed or
    read back by identity; returns its metrics."""
    cfg = OmegaConf.merge(OmegaConf.structured(SearchRunConfig), config)
    return run_search(cfg, folder, mode="job")
