"""What every app run shares: the device, the data splits, strict JSON.

``resolve_device`` is the only place in the package that chooses a device (``check_device`` says,
without side effects, whether a device string can be used here); ``load_splits`` the only place that
turns a data config into [T, B] streams. Run folders are ``enas_rnn.runfolder``'s.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from enas_rnn.checkpoint import write_text_atomic
from enas_rnn.corpus import Corpus, batchify, load_corpus, resolve_root
from enas_rnn.errors import ConfigError


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
#: The value rule of every app's ``device`` key (the form); :func:`check_device` also asks the machine.
DEVICE_RULE = (lambda v: isinstance(v, str) and bool(_DEVICE_RE.match(v)), "auto, cpu, cuda, cuda:N, mps")


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


def config_digest(obj: Any) -> str:
    """A short, stable id of a JSON-able config (names cache folders)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]
