#!/usr/bin/env python
"""What does ``torch.compile`` cost on an exported layer, per sequence length? Prints one JSON line.

The exported ``Layer`` runs its time loop in Python, so ``torch.compile`` unrolls it: the first call at
a sequence length compiles a graph of that length, and every new length compiles again (Dynamo
specialises on the loop's trip count; after ``torch._dynamo.config.recompile_limit`` lengths it falls
back to eager). The one-step ``Cell`` compiles once and serves any length from a Python loop in the
caller. This script builds the generated module of the ``lstm`` genotype (2 layers x 200, the size of
``experiment=small``) through ``enas_rnn.export.generate_source``, imports it from a file as a user
would, and times

* ``compiler_start``: the first compile of a trivial function (the compiler's one-time start, paid once
  per process by whatever compiles first; kept out of the figures below);
* ``layer_T35_first``: the first compiled call at T = 35 (compile + run);
* ``layer_T20_first``: then the first call at T = 20 (a recompile);
* ``layer_T35_cached``: a second call at T = 35 (the cached graph);
* ``cell_first``: the first compiled call of the one-step Cell (compile + run, one step); after the
  Layer's compiles it may reuse kernels they built, so ``--cell-only`` times it in a process of its own;
* ``cell_loop_T35`` / ``cell_loop_T20``: a Python loop over the compiled Cell at T = 35 and 20
  (no recompile: the step's shapes do not depend on T), both layers;
* ``eager_T35``: the uncompiled Layer at T = 35, for scale.

Forward passes under ``torch.no_grad()`` (inference); ``--grad`` times forward + backward instead.
Inductor's on-disk cache starts empty (a private temporary folder) unless ``--warm-cache``, so the
"first" figures are what a first use costs.

    taskset -c 0 env OMP_NUM_THREADS=1 python scripts/bench_export_compile.py     # minutes
    python scripts/bench_export_compile.py --hidden 16 --lengths 5 3               # a toy run (seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's enas_rnn, not an installed one

import torch  # noqa: E402

from enas_rnn.export import generate_source  # noqa: E402
from enas_rnn.genotype import get_named  # noqa: E402
from enas_rnn.runs import flush_denormals  # noqa: E402


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _import_generated(folder: Path, name: str, hidden: int, num_layers: int) -> Any:
    """Writes the generated module to ``folder/<name>.py`` and imports it by name, as a user does."""
    (folder / f"{name}.py").write_text(generate_source(get_named("lstm"), None, name), encoding="utf-8")
    sys.path.insert(0, str(folder))
    try:
        mod = importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))
    return mod.Layer(hidden, hidden, num_layers)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=200, help="input and hidden size (experiment=small: 200)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--lengths", type=int, nargs=2, default=[35, 20], metavar=("T1", "T2"),
                   help="the first and the second sequence length")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (inductor: the default one)")
    p.add_argument("--grad", action="store_true", help="time forward + backward instead of inference")
    p.add_argument("--cell-only", action="store_true",
                   help="time only the Cell path (in this fresh process, so no kernel compiled for the Layer helps it)")
    p.add_argument("--warm-cache", action="store_true",
                   help="use the user's on-disk compile cache (default: an empty one, so every compile is cold)")
    args = p.parse_args(argv)
    cache = None if args.warm_cache else tempfile.TemporaryDirectory(prefix="bench_export_compile_cache_")
    if cache is not None:
        # Inductor keeps compiled graphs on disk across processes; a second run would time cache hits.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name
    flush_denormals()
    torch.manual_seed(0)
    t1, t2 = args.lengths
    H, B, L = args.hidden, args.batch, args.layers
    with tempfile.TemporaryDirectory(prefix="bench_export_compile_") as tmp:
        layer = _import_generated(Path(tmp), "cell_bench_lstm", H, L)
        x1, x2 = torch.randn(t1, B, H), torch.randn(t2, B, H)
        grad = contextlib.nullcontext if args.grad else torch.no_grad

        def run(module: Callable[..., Any], x: torch.Tensor) -> None:
            with grad():
                out, _ = module(x)
                if args.grad:
                    out.sum().backward()

        def cell_loop(cells: list[Callable[..., Any]], x: torch.Tensor) -> None:
            # What a caller writes around the compiled one-step Cell: the same layer, looped outside.
            with grad():
                seq = x
                for cell in cells:
                    # two distinct zero tensors: one state shape for every call, so one compiled graph
                    h, c = seq.new_zeros(seq.shape[1], H), seq.new_zeros(seq.shape[1], H)
                    outs = []
                    for t in range(seq.shape[0]):
                        h, (h, c) = cell(seq[t], (h, c))
                        outs.append(h)
                    seq = torch.stack(outs)
                if args.grad:
                    seq.sum().backward()

        seconds: dict[str, float] = {}
        # The compiler's one-time start (imports, worker pool) is paid by whichever compile comes first;
        # a trivial function pays it here, so the figures below are the layer's own.
        trivial = torch.compile(lambda v: v.sin() + 1, backend=args.backend)
        seconds["compiler_start"] = _timed(lambda: trivial(torch.randn(4)))
        run(layer, x1)  # warm the eager kernels, so the eager figure is a steady-state one
        seconds["eager_T%d" % t1] = _timed(lambda: run(layer, x1))
        if not args.cell_only:
            compiled = torch.compile(layer, backend=args.backend)
            seconds["layer_T%d_first" % t1] = _timed(lambda: run(compiled, x1))
            seconds["layer_T%d_first" % t2] = _timed(lambda: run(compiled, x2))
            seconds["layer_T%d_cached" % t1] = _timed(lambda: run(compiled, x1))
        cells = [torch.compile(cell, backend=args.backend) for cell in layer.cells]
        seconds["cell_first"] = _timed(lambda: cell_loop(cells, x1[:1]))  # compiles each layer's Cell once
        seconds["cell_loop_T%d" % t1] = _timed(lambda: cell_loop(cells, x1))
        seconds["cell_loop_T%d" % t2] = _timed(lambda: cell_loop(cells, x2))
    report = {
        "bench": "export_compile", "genotype": "lstm", "hidden": H, "layers": L, "batch": B, "lengths": [t1, t2],
        "backend": args.backend, "grad": args.grad, "cell_only": args.cell_only, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "cold_cache": cache is not None, "seconds": {k: round(v, 4) for k, v in seconds.items()},
    }
    if cache is not None:
        cache.cleanup()
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
