"""What every app run shares: the device, the data splits, strict JSON, TensorBoard hparams.

``resolve_device`` is the only place in the package that chooses a device; ``load_splits`` the
only place that turns a data config into [T, B] streams.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import OmegaConf

from enas_rnn.checkpoint import write_text_atomic
from enas_rnn.corpus import Corpus, batchify, load_corpus, resolve_root
from enas_rnn.errors import ConfigError, UserError


_CUDA_RE = re.compile(r"cuda(?::(\d+))?")


def valid_devices() -> list[str]:
    """The device values this machine accepts: auto, cpu, then cuda and cuda:N per GPU, mps where present."""
    out = ["auto", "cpu"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        out.append("mps")
    return out


def check_device(name: Any) -> None:
    """Raises ConfigError unless ``name`` is a device this machine has; no side effects.

    Accepted: ``auto``, ``cpu``, ``cuda`` and ``cuda:N`` (N < torch.cuda.device_count()) where CUDA is
    available, ``mps`` where ``torch.backends.mps.is_available()``. The message names the valid values
    here. Apps call it before they claim a run folder, so a bad device costs nothing.
    """
    name = str(name)
    valid = ", ".join(valid_devices())
    if name in ("auto", "cpu"):
        return
    cuda = _CUDA_RE.fullmatch(name)
    if cuda:
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but CUDA is not available here: valid values on this machine are {valid}")
        count = torch.cuda.device_count()
        if cuda.group(1) is not None and int(cuda.group(1)) >= count:
            raise ConfigError(f"device={name} but this machine has {count} CUDA device{'s' if count != 1 else ''}: "
                              f"valid values on this machine are {valid}")
        return
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device=mps but MPS (Apple's GPU backend) is not available here: valid values on this "
                              f"machine are {valid}")
        return
    raise ConfigError(f"invalid config value device={name!r}: valid values on this machine are {valid}")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; the only place in the package that chooses a device.

    The name is checked first (:func:`check_device`: a device this machine lacks is a ConfigError
    naming the valid ones, never a traceback later). Every app resolves its device here, so this is
    also where the process's CPU float mode is set: denormal floats are flushed to zero
    (:func:`flush_denormals`).
    """
    check_device(name)
    flush_denormals()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def flush_denormals() -> bool:
    """Flush denormal floats (|v| < 1.2e-38 in float32) to zero on the CPU (FTZ/DAZ); True if supported.

    Why: children of a search that saturate or vanish push gradients into the denormal range,
    where x86 arithmetic is ~100x slower. Measured on the lstm-space shared step (H = 256, 30
    windows of a seed-0 search, one thread): 524 -> 273 ms per step; enas space 329 -> 315 ms.
    Values that small change no result a float32 model can express; GPU kernels flush them too.
    """
    return bool(torch.set_flush_denormal(True))


@dataclass
class Splits:
    """A corpus cut into [T, B] streams on the run's device."""

    corpus: Corpus
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor


def load_splits(data_cfg: Any, device: torch.device) -> Splits:
    """Reads the corpus named by the data config and batchifies it (train/eval/test batch sizes)."""
    root = resolve_root(data_cfg.root, data_cfg.name)
    corpus = load_corpus(root, download=data_cfg.download, name=data_cfg.name)
    return Splits(
        corpus,
        batchify(corpus.train, data_cfg.batch_size, "train", "data.batch_size").to(device),
        batchify(corpus.valid, data_cfg.eval_batch_size, "valid", "data.eval_batch_size").to(device),
        batchify(corpus.test, data_cfg.test_batch_size, "test", "data.test_batch_size").to(device),
    )


def vocab_size_of(data_cfg: Any) -> int:
    """Vocabulary size of the configured corpus (a parameter count depends on it)."""
    root = resolve_root(data_cfg.root, data_cfg.name)
    return len(load_corpus(root, download=data_cfg.download, name=data_cfg.name).vocab)


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors (or nested tuples/lists of them, e.g. hidden states) moved to ``device``."""
    if obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    return type(obj)(to_device(o, device) for o in obj)


def strict(o: Any) -> Any:
    """Replaces non-finite floats by None, recursively: JSON has no NaN or Infinity."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: strict(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [strict(v) for v in o]
    return o


def write_json(path: str | Path, obj: Any) -> Path:
    """Writes strict JSON atomically (NaN and infinities become null, so every reader accepts it)."""
    return write_text_atomic(path, json.dumps(strict(obj), indent=2, allow_nan=False) + "\n")


class RunFolderBusy(UserError):
    """Another process holds the run folder's lock."""


LOCK_NAME = ".lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "run", wait: bool = False, create: bool = True,
                name: str = LOCK_NAME) -> Iterator[None]:
    """Holds ``<folder>/.lock`` (an OS file lock, released even if the process dies) while the block runs.

    Without ``wait`` a second process is refused with a message naming the folder; with ``wait`` it
    blocks until the first is done (e.g. two pipelines that need the same cached baseline run). A folder
    to resume is never created (``create=False``): a mistyped path is an error, not a new empty folder.
    """
    folder = Path(folder)
    if not create and not folder.is_dir():
        raise ConfigError(f"resume={folder}: no such folder; pass the folder of an earlier run")
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise RunFolderBusy(
                f"{folder} is in use by another {what} that is still running (it holds {folder / name}): "
                "wait for it to finish, or start this one in another folder (hydra.run.dir=<new folder>)"
            ) from None
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


#: What an app leaves in a run folder once it has started (Hydra's own .hydra/ and log do not count).
RUN_MARKERS: tuple[str, ...] = ("metrics.json", "checkpoints", "search_history.jsonl", "diverged.json")


def refuse_occupied(run_dir: str | Path, app: str) -> None:
    """A fresh run never writes into a folder that holds another run: it would replace its files."""
    run_dir = Path(run_dir)
    found = [m for m in RUN_MARKERS if (run_dir / m).exists()]
    if found:
        state = "a finished" if (run_dir / "metrics.json").exists() else "an unfinished"
        raise ConfigError(
            f"{run_dir} already holds {state} run ({', '.join(found)}); nothing was changed. Continue it with "
            f"{app} resume={run_dir}, or start a new run in another folder (drop hydra.run.dir= for a fresh one)"
        )


#: Keys a resumed run takes from the new command; every other override must agree with the saved run.
FOLLOW_ON_RESUME: tuple[str, ...] = ("resume", "device", "train.progress", "shared_train.progress", "experiment")


def check_resume_overrides(overrides: Sequence[str], given: Any, saved: Any) -> None:
    """Refuses command-line overrides that a resumed run cannot apply (its saved config is its identity).

    ``overrides`` are the ``key=value`` strings of the command (Hydra's ``overrides.task``), ``given``
    the config they composed and ``saved`` the run's own. An override whose key has the same value in
    both is harmless; one that would change the run is an error naming both values.
    """
    bad = []
    for o in overrides:
        key = o.partition("=")[0].lstrip("+~").split("@")[-1]
        if key.startswith("hydra") or key in FOLLOW_ON_RESUME:
            continue
        new, old = OmegaConf.select(given, key, default=None), OmegaConf.select(saved, key, default=None)
        as_plain = (lambda v: OmegaConf.to_container(v, resolve=True, enum_to_str=True)  # noqa: E731
                    if OmegaConf.is_config(v) else (v.value if hasattr(v, "value") else v))
        if as_plain(new) != as_plain(old):
            shown = as_plain(old)
            bad.append(f"{o} (the run has {key}={shown})" if not isinstance(shown, (dict, list)) else o)
    if bad:
        raise ConfigError(
            "resume= continues a saved run with its own settings, so these overrides cannot apply: "
            + "; ".join(bad) + ". Drop them, or start a new run without resume="
        )


def config_digest(obj: Any) -> str:
    """A short, stable id of a JSON-able config (names cache folders)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]
