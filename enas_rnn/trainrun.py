"""One language-model training run in its folder: corpus -> model -> the one loop -> metrics.json.

The train app, the comparison's runs, the selection's rungs, the MRS study and compression all train
through :func:`train_lm`. A run folder holds::

    run.json                the run's identity and status (enas_rnn.runfolder)
    metrics.json            final numbers (see :func:`train_lm`)
    checkpoints/last.pt     resumable state, written atomically (last.prev.pt: the one before)
    checkpoints/best.pt     weights with the best validation loss
    diverged.json           instead of metrics.json when the run diverged (a result, kept)
    tb/                     TensorBoard events
    train.log               the run's log lines

A run is resumable at every checkpoint: the same folder and config continue exactly where it stopped
(the step counter, optimiser state, RNG states, the carried hidden state). ``stop_at`` pauses a run at a
step (a rung of successive halving) without changing its identity: training to step 150 in one go or
pausing at 50 and continuing gives the same weights.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

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
from enas_rnn.corpus import DataConfig
from enas_rnn.errors import CheckpointError, ConfigError, TrainingDiverged
from enas_rnn.genotype import Genotype, load_genotype
from enas_rnn.model import CoreKind, ModelConfig, build_lm, count_parameters
from enas_rnn.rules import check_values, rule
from enas_rnn.runfolder import TERMINAL, Claim, RunFolder, identity_of, resumed_config
from enas_rnn.runs import DEVICE_RULE, load_splits, resolve_device, to_device, write_json
from enas_rnn.train import LoopState, StepResult, TrainConfig, evaluate, fit, perplexity, show_progress

log = logging.getLogger(__name__)

__all__ = ["TrainRunConfig", "TrainJob", "train_lm", "run_train_job", "train_identity", "genotype_of",
           "restore_train_config", "APP", "DIVERGED"]

APP = "enas-train"
DIVERGED = "diverged.json"


@dataclass
class TrainRunConfig:
    """One training run (the `enas-train` schema): data, model, loop, the cell, the seed."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cell: str = "lstm"  # with model.core=cell: a named genotype or a path to genotype.json
    seed: int = 0
    device: str = rule("auto", DEVICE_RULE)  # auto | cpu | cuda | cuda:N | mps
    resume: Optional[str] = None  # a run folder to continue from its last checkpoint
    experiment: Optional[str] = None  # name of the preset, for the record

    @staticmethod
    def cross_check(cfg: Any, key: Callable[[str], str]) -> None:
        m = cfg.model
        if m.tie_weights and m.emb_size != m.hidden_size:
            raise ConfigError(
                f"{key('model.tie_weights')}=true needs {key('model.emb_size')} == {key('model.hidden_size')} "
                f"(got {m.emb_size} and {m.hidden_size}): set both to one value or {key('model.tie_weights')}=false")


def genotype_of(cfg: Any) -> Optional[Genotype]:
    """The genotype a run config trains (``cell=`` with ``model.core=cell``), None for nn.LSTM / nn.GRU."""
    if CoreKind(cfg.model.core) != CoreKind.cell:
        return None
    return load_genotype(str(cfg.cell))


def train_identity(cfg: Any, genotype: Optional[Genotype]) -> dict[str, Any]:
    """What makes two training runs the same run: the config (not where a genotype file lies) and the cell."""
    ident = identity_of(cfg)
    ident.pop("cell", None)  # a path or a name: the genotype itself is the identity
    ident["genotype"] = None if genotype is None else genotype.to_dict()
    return ident


def restore_train_config(record: Mapping[str, Any]) -> tuple[DictConfig, Optional[Genotype]]:
    """The config and genotype of a run from its run.json identity (typed like a fresh config)."""
    ident = dict(record["identity"])
    g = ident.pop("genotype", None)
    cfg = OmegaConf.merge(OmegaConf.structured(TrainRunConfig), ident)
    return cfg, None if g is None else Genotype.from_dict(g)


def _restore_checkpoint(folder: Path, device: torch.device) -> Optional[dict]:
    """The newest readable checkpoint of a training run, None when it has none yet."""
    ckpts = checkpoint_dir(folder)
    if not (ckpts / LAST).is_file() and not (ckpts / LAST).with_name("last.prev.pt").is_file():
        return None
    payload = load_resumable(folder, map_location=device)
    if "search" in payload or "loop" not in payload:
        raise CheckpointError(f"resume={folder} is not an enas-train run (its checkpoint holds "
                              f"{'a search' if 'search' in payload else 'no training state'}): "
                              f"continue a search with enas-search resume={folder}")
    return payload


def train_lm(
    cfg: DictConfig,
    folder: str | Path,
    genotype: Optional[Genotype] = None,
    *,
    mode: str = "job",
    stop_at: Optional[int] = None,
    on_step: Optional[Callable[[LoopState, StepResult], None]] = None,
    overrides: Sequence[str] = (),
    log_file: Optional[str] = "train.log",
    hydra_record: Optional[Mapping[str, str]] = None,
    wait: bool = False,
) -> dict[str, Any]:
    """Trains (or continues, or reads back) one language model in ``folder``; returns its metrics.

    ``mode`` is the run folder's claim (:meth:`enas_rnn.runfolder.RunFolder.decide`): ``new`` for a fresh
    command, ``resume`` for ``resume=`` (the folder's own config counts; ``cfg`` supplies only the device
    and the progress bar), ``job`` for a run inside another app (fresh, resumed or reused by identity).
    ``genotype`` is the cell a ``model.core=cell`` run trains (default: the one ``cfg.cell`` names); with
    ``cfg.resume`` set, mode ``job`` means ``resume``. ``stop_at`` pauses the run at that step (validated, checkpointed, status ``paused``); the returned
    metrics are then those of the pause. ``wait``: a folder in use by another process is waited for
    (a cached run several jobs need), not refused.

    metrics.json: valid_ppl (best validation), test_ppl (of the best-validation weights), num_params,
    tokens_per_s (training only), wall_s, steps, skipped_steps, plus the history of validations.
    """
    if cfg.get("resume") and mode == "job":  # a config that names the run to continue
        mode, folder = "resume", cfg.resume
    folder = Path(folder)
    run = RunFolder(folder, APP)
    if mode == "resume":
        cfg, extras = resumed_config(run, TrainRunConfig, cfg, overrides, ("device", "train.progress"), ("genotype",))
        g = extras.get("genotype")
        genotype = None if g is None else Genotype.from_dict(g)
    elif genotype is None:
        genotype = genotype_of(cfg)  # the config names its cell (a name or a file)
    check_values(cfg, TrainRunConfig)
    ident = train_identity(cfg, genotype)
    with run.session(ident, mode, log_file=log_file, hydra_record=hydra_record, wait=wait) as claim:
        if claim == Claim.reuse:
            log.info("nothing to do: %s holds a finished run (read back, nothing changed)", folder)
            return _read_back(run, stop_at)
        record = run.record() or {}
        pause = (record.get("pauses") or {}).get(str(stop_at)) if stop_at is not None else None
        if pause is not None:
            return pause
        try:
            metrics = _train(cfg, folder, genotype, run, stop_at, on_step, overrides)
        except TrainingDiverged as exc:
            write_json(folder / DIVERGED, {"error": str(exc), "valid_ppl": math.inf, "test_ppl": math.inf})
            raise
        return metrics


def _read_back(run: RunFolder, stop_at: Optional[int]) -> dict[str, Any]:
    """A finished (or diverged) run's results: metrics.json, or the divergence it recorded; with ``stop_at``,
    the pause it recorded at that step (a selection rung read back from a run that has since finished)."""
    pause = ((run.record() or {}).get("pauses") or {}).get(str(stop_at)) if stop_at is not None else None
    if pause is not None:
        return pause
    if (run.path / "metrics.json").is_file():
        return json.loads((run.path / "metrics.json").read_text())
    if (run.path / DIVERGED).is_file():
        raise TrainingDiverged(json.loads((run.path / DIVERGED).read_text()).get("error", "the run diverged"))
    raise CheckpointError(f"{run.path} is marked finished but holds no metrics.json: start the run in a new folder")


def _train(cfg: DictConfig, folder: Path, genotype: Optional[Genotype], run: RunFolder, stop_at: Optional[int],
           on_step: Optional[Callable[[LoopState, StepResult], None]], overrides: Sequence[str]) -> dict[str, Any]:
    wall_t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    payload = _restore_checkpoint(folder, device)
    if payload is None and (folder / "tb").exists():
        shutil.rmtree(folder / "tb")  # interrupted before its first checkpoint: start over cleanly
    seed_everything(cfg.seed)
    splits = load_splits(cfg.data, device)
    model = build_lm(cfg.model, len(splits.corpus.vocab), genotype)
    g_dict = None if genotype is None else genotype.to_dict()
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
                f"checkpoint in {folder} does not match the model its config builds ({exc}); "
                "it was written by another version: start a new run") from None
        state = LoopState.from_dict(payload["loop"])
        state.hidden = to_device(payload.get("hidden"), device)
        wall_before = payload.get("wall_s", 0.0)
        set_rng_state(payload["rng"])

    cfg_dict = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    ckpt_dir = checkpoint_dir(folder)

    def save(st: LoopState, is_best: bool) -> None:
        base = {"config": cfg_dict, "genotype": g_dict, "step": st.step}
        if is_best:
            save_checkpoint(ckpt_dir / BEST, {**base, "state_dicts": {"model": model.state_dict()}}, keep_previous=False)
        save_checkpoint(ckpt_dir / LAST, {
            **base,
            "state_dicts": {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
            "loop": st.to_dict(), "hidden": st.hidden, "rng": rng_state(),
            "wall_s": wall_before + time.perf_counter() - wall_t0,
        })

    name = f"train-{'nn_' + CoreKind(cfg.model.core).value if genotype is None else genotype.hash()}" \
           f"-h{cfg.model.hidden_size}-seed{cfg.seed}"
    writer = open_writer(folder, name, state.step if payload is not None else None)
    if genotype is not None and payload is None:
        writer.add_text("cell", cell_markdown(genotype), 0)
    windows = math.ceil((splits.train.size(0) - 1) / cfg.data.bptt)
    total = cfg.train.epochs * windows
    if cfg.train.max_steps is not None:
        total = min(total, cfg.train.max_steps)
    num_params = count_parameters(model)
    what = (f"nn.{'LSTM' if CoreKind(cfg.model.core) == CoreKind.lstm else 'GRU'}" if genotype is None
            else f"cell {genotype.hash()} ({genotype.space} space)")
    log.info("enas-train in %s: %s, %s parameters, %d layer(s) of %d units; %s; budget %s; device %s%s%s", folder,
             what, f"{num_params:,}", cfg.model.num_layers, cfg.model.hidden_size,
             f"{cfg.data.name}: {splits.train.numel():,} training tokens",
             f"{cfg.train.max_steps} steps" if cfg.train.max_steps else f"{cfg.train.epochs} epochs", device,
             f", resumed at step {state.step}" if payload is not None else "",
             f", pausing at step {stop_at}" if stop_at is not None and stop_at < total else "")
    train_cfg = cfg.train
    paused = stop_at is not None and stop_at < total
    if paused:
        train_cfg = OmegaConf.merge(cfg.train, {"max_steps": int(stop_at)})  # the loop stops (and validates) there
    with tqdm(total=total, initial=state.step, disable=not show_progress(cfg.train.progress), unit="step",
              leave=False) as bar:
        if state.step < (int(stop_at) if paused else total) or payload is None:
            fit(model, optimizer, splits.train, splits.valid, state, train_cfg, cfg.data, writer, save, bar, on_step)

    if paused:
        last = state.history[-1] if state.history else {}
        result = {"step": state.step, "valid_ppl": last.get("valid_ppl", math.inf),
                  "best_valid_ppl": perplexity(state.best_valid_loss), "num_params": num_params,
                  "tokens": state.tokens, "history": state.history}
        writer.close()
        record = run.record() or {}
        pauses = dict(record.get("pauses") or {})
        pauses[str(stop_at)] = result
        run.update(status="paused", pauses=pauses)
        return result

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
        "model": CoreKind(cfg.model.core).value,
        "genotype": g_dict,
        "device": str(device),
        "history": state.history,
    }
    write_hparams(writer, hparams(cfg, "train", overrides),
                  {"hparam/valid_ppl": min(metrics["valid_ppl"], PPL_CAP),
                   "hparam/test_ppl": min(metrics["test_ppl"], PPL_CAP)}, state.step)
    writer.close()
    write_json(folder / "metrics.json", metrics)
    run.finish()
    log.info("done: valid ppl %.2f, test ppl %.2f, %s parameters; wrote %s", metrics["valid_ppl"], metrics["test_ppl"],
             f"{num_params:,}", folder / "metrics.json")
    return metrics


@dataclass(frozen=True)
class TrainJob:
    """One training run as a job for an executor (plain data only, so it pickles to another process)."""

    name: str
    config: dict  # a TrainRunConfig as plain data
    folder: str
    genotype: Optional[dict] = None
    stop_at: Optional[int] = None
    wait: bool = False  # a shared (cached) run: wait for another process that trains it, then reuse it


def run_train_job(job: TrainJob) -> dict[str, Any]:
    """Runs a :class:`TrainJob` (fresh, resumed or reused by identity); returns ``{"metrics", "status"}``.

    ``status``: trained, resumed, reused, paused (at ``stop_at``) or diverged; a diverged run is a result
    (its metrics hold infinite perplexities and the error), not a failure of the job."""
    cfg = OmegaConf.merge(OmegaConf.structured(TrainRunConfig), job.config)
    genotype = Genotype.from_dict(job.genotype) if job.genotype is not None else None
    before = RunFolder(Path(job.folder), APP).status
    try:
        metrics = train_lm(cfg, job.folder, genotype, mode="job", stop_at=job.stop_at, wait=job.wait)
    except TrainingDiverged as exc:
        metrics = {"valid_ppl": math.inf, "test_ppl": math.inf, "num_params": None, "tokens_per_s": None,
                   "wall_s": None, "steps": None, "history": [], "error": str(exc)}
        return {"metrics": metrics, "status": "diverged"}
    if before in TERMINAL:
        status = "reused"
    elif job.stop_at is not None and "test_ppl" not in metrics:
        status = "paused"
    else:
        status = "resumed" if before is not None else "trained"
    return {"metrics": metrics, "status": status}
