"""Optional C++ kernels for float32 on the CPU (``enas_loop.cpp``): the cells' time loops (enas and lstm
space) and the LM loss's in-place softmax (``enas_rnn.model.linear_cross_entropy``).

The source is compiled on first use with ``torch.utils.cpp_extension.load`` (needs a C++ compiler;
the build is cached under ``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``, in a
folder keyed by what it builds - the source, the flags, torch's version and the interpreter - so
several checkouts and virtual environments keep their builds side by side; it takes 10-20 s once). When it cannot be built, or ``ENAS_RNN_NATIVE=0`` is set, enas_rnn warns
once and runs the PyTorch code (the loops in ``enas_rnn.spaces.enas`` / ``.lstm``), which computes the same numbers
(to float rounding) and stays the path for every other dtype and device.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

__all__ = ["ACT_CODES", "available", "ops", "reason"]

log = logging.getLogger(__name__)

#: Op name -> the C++ activation code (``enas_loop.cpp``'s ``Act``); None is identity without clamp.
ACT_CODES: dict[Optional[str], int] = {None: 0, "tanh": 1, "sigmoid": 2, "relu": 3, "relu_clip": 4, "clip": 5}

_SOURCE = Path(__file__).with_name("enas_loop.cpp")
# -march=native: the vectorised activations (at::vec) pick AVX2 / AVX-512 from the compiler's target;
# the build is made on, and cached for, the machine that runs it.
_CFLAGS = ("-O3", "-march=native")
# -fopenmp: the loops' elementwise passes and the loss's softmax rows split over torch's intra-op threads
# with at::parallel_for, and that header runs the whole range on the calling thread when the including
# code is compiled without OpenMP. Linked so, the extension uses the libgomp torch has already loaded
# (same soname): one thread pool, sized by torch.set_num_threads. Without it (a compiler with no OpenMP
# runtime) the build is retried without: the same numbers, those passes on one thread.
_OPENMP = ("-fopenmp",)
_STALE_LOCK_S = 600.0
_state: dict[str, Any] = {"tried": False, "ok": False, "reason": None}


def _flags(openmp: bool) -> tuple[list[str], list[str]]:
    """(compiler flags, linker flags) of a build with or without OpenMP."""
    return list(_CFLAGS) + (list(_OPENMP) if openmp else []), list(_OPENMP) if openmp else []


def _build_dir(openmp: bool = True) -> Path:
    """The cache folder of this build: keyed by the source (its text and where it lies: the compile command
    names the path), the flags, torch's version and the interpreter.

    Why not by torch's version alone: two virtual environments or checkouts with the same torch then
    share one folder and evict each other's build (a full rebuild, 1-3 min on a loaded machine, each time
    the other one ran last)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "torch_extensions")
    key = hashlib.sha1()
    cflags, ldflags = _flags(openmp)
    for part in (_SOURCE.read_bytes(), str(_SOURCE.resolve()).encode(), " ".join(cflags + ["|"] + ldflags).encode(),
                 torch.__version__.encode(), sys.prefix.encode(), sys.version.encode()):
        key.update(part)
        key.update(b"\0")
    tag = torch.__version__.replace("+", "_").replace(".", "_")
    return Path(root) / f"enas_rnn_native_torch{tag}_{key.hexdigest()[:12]}"


def _is_built(build: Path) -> bool:
    """Whether the folder already holds a finished build (then loading it only links, no compiler runs)."""
    return (build / "enas_rnn_native.so").is_file() and not (build / "lock").exists()


def _build() -> None:
    try:
        _build_with(openmp=True)
    except Exception as e:  # e.g. clang without libomp: build without OpenMP rather than fall back to PyTorch
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.warning("enas_rnn: building the native loops with OpenMP failed (%s); building without it "
                    "(same numbers; their elementwise passes then run on one thread)", first)
        _build_with(openmp=False)


def _build_with(openmp: bool) -> None:
    from torch.utils.cpp_extension import load

    build = _build_dir(openmp)
    cflags, ldflags = _flags(openmp)
    build.mkdir(parents=True, exist_ok=True)
    lock = build / "lock"
    # A build killed midway leaves its lock behind and the next load would wait for it forever; a
    # real build takes well under this.
    if lock.exists() and time.time() - lock.stat().st_mtime > _STALE_LOCK_S:
        lock.unlink(missing_ok=True)
    cached = _is_built(build)
    t0 = time.perf_counter()
    if not cached:
        log.info("building enas_rnn's native loops in %s (once per source, flags and environment)", build)
    load(
        name="enas_rnn_native",
        sources=[str(_SOURCE)],
        build_directory=str(build),
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        is_python_module=False,
        verbose=False,
    )
    if not cached:
        log.info("built enas_rnn's native loops in %.1f s", time.perf_counter() - t0)


def available() -> bool:
    """True when the native loop is loaded (built on the first call; False, with one warning, if not)."""
    if not _state["tried"]:
        _state["tried"] = True
        if os.environ.get("ENAS_RNN_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            _state["reason"] = "disabled by ENAS_RNN_NATIVE=0"
        else:
            try:
                _build()
                torch.ops.enas_rnn_native.loop_forward  # noqa: B018 - raises if registration failed
                _state["ok"] = True
            except Exception as e:  # no compiler, no write access to the cache, ...: fall back
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                _state["reason"] = f"could not build enas_rnn/native/enas_loop.cpp ({first})"
                warnings.warn(
                    f"enas_rnn: {_state['reason']}; the cells' loops and the LM loss run PyTorch code instead "
                    "(same numbers, slower on the CPU). Install a C++ compiler (g++) to get the fast loop, or set "
                    "ENAS_RNN_NATIVE=0 to silence this.",
                    RuntimeWarning,
                    stacklevel=2,
                )
    return bool(_state["ok"])


def reason() -> Optional[str]:
    """Why the native loop is not in use (None when it is, or before the first :func:`available`)."""
    return _state["reason"]


def ops() -> Any:
    """``torch.ops.enas_rnn_native``, built if need be (RuntimeError when it cannot be)."""
    if not available():
        raise RuntimeError(f"enas_rnn's native loop is not available: {reason()}")
    return torch.ops.enas_rnn_native
