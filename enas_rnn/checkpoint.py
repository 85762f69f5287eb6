"""Checkpoints: plain dicts of tensors and primitives, written atomically, read with weights_only=True.

A checkpoint is ``{config, genotype?, state_dicts, step, loop, rng}`` (ARCHITECTURE.md, style 7):
whole modules are never pickled, so a checkpoint loads without enas_rnn's classes and cannot run
code on load.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from enas_rnn.errors import CheckpointError

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from, in a form torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seeds python, numpy and torch (CPU and CUDA) so a run is reproducible on CPU."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def previous(path: str | Path) -> Path:
    """Where the checkpoint before ``path`` is kept (``last.pt`` -> ``last.prev.pt``)."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def unreadable_name(path: str | Path) -> Path:
    """A free name for an unreadable ``path``: ``last.unreadable.pt``, else ``last.unreadable.1.pt``, ..."""
    path = Path(path)
    target, k = path.with_name(f"{path.stem}.unreadable{path.suffix}"), 0
    while target.exists():
        k += 1
        target = path.with_name(f"{path.stem}.unreadable.{k}{path.suffix}")
    return target


def set_aside(path: str | Path) -> Path:
    """Renames an unreadable checkpoint to :func:`unreadable_name` and returns where it went.

    Why: :func:`save_checkpoint` rotates ``last.pt`` into ``last.prev.pt``; left in place, a corrupt
    ``last.pt`` would replace the one good fallback at the next save. Its bytes are kept for a
    post-mortem, never deleted.
    """
    path = Path(path)
    target = unreadable_name(path)
    os.replace(path, target)
    return target


def save_checkpoint(path: str | Path, payload: dict[str, Any], keep_previous: bool = True) -> Path:
    """Writes to a temporary file in the same folder, then renames: never half a checkpoint.

    With ``keep_previous`` the checkpoint it replaces stays as ``<name>.prev.pt``, so a checkpoint
    that is later found corrupt still has a predecessor to resume from. A failed write (a full disk,
    an unwritable folder) raises CheckpointError and leaves the existing checkpoints untouched.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        torch.save(payload, tmp)
        if keep_previous and path.exists():
            os.replace(path, previous(path))
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a failed write as a RuntimeError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:120]
        raise CheckpointError(
            f"cannot write checkpoint {path} ({reason}): is the disk full or the folder read-only? The earlier "
            f"checkpoints are kept; free space, then continue with resume={path.parent.parent}"
        ) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Writes a text file of a run folder through a temporary sibling and a rename, so a reader
    (or an interrupted run) never sees half a file; the mode is what open() would give."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _why_unreadable(exc: Exception) -> str:
    """A short reason for a failed load, without torch's internal advice (e.g. to set weights_only=False)."""
    text = str(exc)
    if "GLOBAL" in text or "Unsupported global" in text or "can still be loaded" in text:
        return "it holds Python objects other than tensors and plain values, which are never loaded"
    if isinstance(exc, (pickle.UnpicklingError, EOFError)) or "zip archive" in text or "central directory" in text:
        return "the file is truncated or corrupt"
    return f"{type(exc).__name__}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint safely; a missing or corrupt file gives a CheckpointError with the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: pass resume=<run folder> of a run that wrote checkpoints/{LAST}, "
            "or drop resume= to start a new run"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/garbled files
        raise CheckpointError(f"checkpoint {path} is unreadable ({_why_unreadable(exc)}); it is not a usable "
                              "enas_rnn checkpoint") from None
    if not isinstance(payload, dict) or "state_dicts" not in payload or "config" not in payload:
        raise CheckpointError(f"{path} is not an enas_rnn checkpoint (no config/state_dicts)")
    return payload


def load_resumable(run_dir: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The newest readable checkpoint of a run: ``last.pt``, else the one it replaced (``last.prev.pt``).

    When it falls back, an unreadable ``last.pt`` is set aside as ``last.unreadable.pt`` (numbered
    when taken; :func:`set_aside`) and ``last.prev.pt`` is copied into its place (also when
    ``last.pt`` was missing), so the next save
    rotates a readable checkpoint into ``last.prev.pt`` and every "does this run have a last.pt"
    check still sees the run; the warning names both files. When neither can be read nothing is
    moved and the message says that the run cannot continue.
    """
    last = checkpoint_dir(run_dir) / LAST
    if not last.is_file() and not previous(last).is_file():
        raise CheckpointError(f"no checkpoint in {run_dir} (checkpoints/{LAST} is missing): resume= needs the folder "
                              "of a run that wrote checkpoints; drop resume= to start a new run")
    errors = []
    for path in (last, previous(last)):
        if not path.is_file():
            continue
        try:
            payload = load_checkpoint(path, map_location)
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        if path != last:
            # errors is empty when last.pt is missing (a crash between save_checkpoint's two renames)
            why = errors[0] if errors else f"checkpoint {last} is missing"
            log.warning("%s; resuming from the checkpoint before it, %s (step %s); %s", why, path.name,
                        payload.get("step"), _set_aside_and_restore(last, path))
        return payload
    raise CheckpointError(
        f"the run in {run_dir} cannot be resumed: {'; '.join(errors)}. Start a new run in a new folder "
        "(drop resume=); its checkpoints/best.pt, if readable, still holds the best weights"
    )


def _set_aside_and_restore(bad: Path, good: Path) -> str:
    """Moves an unreadable ``bad`` aside (when it exists) and puts a copy of ``good`` in its place;
    says what it did, for the warning."""
    said = []
    if bad.exists():
        try:
            target = set_aside(bad)
        except OSError as exc:  # a read-only folder (someone's finished run): nothing is saved there either
            return f"the unreadable {bad.name} could not be set aside ({exc.strerror or exc}) and stays where it is"
        said.append(f"the unreadable file is kept as {target} (never rotated over {good.name})")
    fd, tmp = tempfile.mkstemp(prefix=bad.name + ".", suffix=".tmp", dir=bad.parent)
    os.close(fd)
    try:
        shutil.copyfile(good, tmp)
        os.replace(tmp, bad)
        said.append(f"{good.name} was copied to {bad.name}")
    except OSError as exc:
        said.append(f"{bad.name} could not be restored from {good.name} ({exc.strerror or exc})")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return "; ".join(said)


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"
