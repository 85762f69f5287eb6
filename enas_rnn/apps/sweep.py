"""`enas-sweep`: one job of a sweep over synthetic tasks = one training run -> ``metrics.json``.

Hydra multirun does the sweeping; each job trains one (core, task settings, model size, data size,
seed) and writes its folder's ``metrics.json``::

    enas-sweep -m core=lstm,gru,enas_paper task.seq_len=5,10,20 model.hidden_size=4,8,16 name=nth

Job folders are named after their overrides (``multirun/sweep/<date>/core=gru,model.hidden_size=8,...``),
so running the same command again with ``resume=<that multirun folder>`` finds them: a job whose folder
holds a finished run with the same settings is reused, and an interrupted sweep resumes where it stopped.
A folder written with other settings (a changed default, say) is refused, naming the keys. At the end
of the multirun ``summary.csv`` and a heatmap are written into the sweep folder
(:mod:`enas_rnn.summary`; the axes come from ``summary.*`` or from the swept keys).

A run that diverges (too many non-finite steps) is a result: its metrics.json says so and holds no
accuracy, and the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from enas_rnn.checkpoint import seed_everything
from enas_rnn.conf import SweepAppConfig
from enas_rnn.errors import TrainingDiverged
from enas_rnn.genotype import load_genotype
from enas_rnn.model import CoreKind
from enas_rnn.rules import check_values
from enas_rnn.runfolder import Claim, RunFolder
from enas_rnn.runs import resolve_device, write_json
from enas_rnn.tasks import (
    TaskKind,
    build_task_model,
    fit_task,
    make_task,
    task_model_summary,
)

log = logging.getLogger(__name__)

__all__ = ["validate_sweep", "job_identity", "core_label", "run_sweep_job"]

METRICS = "metrics.json"


def validate_sweep(cfg: DictConfig) -> None:
    """Value checks of a sweep job (every field's rule; types are checked by the schema)."""
    check_values(cfg, SweepAppConfig)


def job_identity(cfg: DictConfig) -> dict[str, Any]:
    """What makes two jobs the same run: task, model, training and seed (and the cell, for cells)."""
    d = OmegaConf.to_container(OmegaConf.masked_copy(cfg, ["task", "model", "train", "seed", "cell"]),
                               resolve=True, enum_to_str=True)
    if CoreKind(cfg.model.core) != CoreKind.cell:
        d.pop("cell")
    return d


def core_label(cfg: DictConfig) -> str:
    """nn_lstm, nn_gru, or the cell's name (file stem for an unnamed genotype file)."""
    kind = CoreKind(cfg.model.core)
    if kind != CoreKind.cell:
        return f"nn_{kind.value}"
    g = load_genotype(cfg.cell)
    return g.name or Path(str(cfg.cell)).stem


APP = "enas-sweep"


def run_sweep_job(cfg: DictConfig, run_dir: str | Path, mode: str = "job", log_file: Optional[str] = "sweep.log",
                  hydra_record: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Trains one task model as configured into ``run_dir`` (or reads a finished one back); returns the metrics."""
    run_dir = Path(run_dir)
    validate_sweep(cfg)
    identity = job_identity(cfg)
    path = run_dir / METRICS
    run = RunFolder(run_dir, APP)
    with run.session(identity, mode, log_file=log_file, hydra_record=hydra_record) as claim:
        if claim == Claim.reuse:
            log.info("%s already holds %s: reused", run_dir, METRICS)
            return {**json.loads(path.read_text()), "status": "reused"}
        metrics = _train_job(cfg, identity)
        write_json(path, metrics)
        run.finish()
        return {**metrics, "status": "trained"}


def _train_job(cfg: DictConfig, identity: dict[str, Any]) -> dict[str, Any]:
    wall0 = time.perf_counter()
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    genotype = load_genotype(cfg.cell) if CoreKind(cfg.model.core) == CoreKind.cell else None
    data = make_task(cfg.task).to(device)
    model = build_task_model(data, None, cfg.model, genotype).to(device)
    info = task_model_summary(model)
    t = cfg.task
    metrics: dict[str, Any] = {
        "task": TaskKind(t.name).value, "core": core_label(cfg), "seq_len": t.seq_len,
        "features": t.features if data.kind == TaskKind.nth else 1, "train_size": t.train_size,
        "hidden_size": cfg.model.hidden_size, "num_layers": cfg.model.num_layers, "seed": cfg.seed,
        "metric": data.metric, "chance": 1.0 / t.features if data.kind == TaskKind.nth else None, **info,
    }
    try:
        res = fit_task(model, data, cfg.train, cfg.seed)
    except TrainingDiverged as exc:
        metrics.update(diverged=True, error=str(exc))
    else:
        metrics.update(res.metrics)
        metrics.update(diverged=False, steps=res.steps, best_step=res.best_step, skipped_steps=res.skipped,
                       stopped_early=res.stopped_early, train_s=res.train_seconds,
                       steps_per_s=res.steps / res.train_seconds if res.train_seconds > 0 else None,
                       history=res.history)
    metrics.update(wall_s=time.perf_counter() - wall0, device=str(device),
                   torch_threads=torch.get_num_threads(), config=identity)
    return metrics
