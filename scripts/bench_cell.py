#!/usr/bin/env python
"""Benchmark the cells against torch.nn.LSTM: tokens/s for forward + backward.

Variants: nn.LSTM, FixedCell(lstm), SharedCell running lstm, SharedCell running
enas_paper, SharedCell running a seeded random 8-node lstm-space cell. Each variant is
warmed up, then the variants are timed round-robin (so background load hits all of them
alike) and the median per variant is reported, with its time relative to nn.LSTM.

    python scripts/bench_cell.py                       # CPU, H=E=256, B=32, T=35
    python scripts/bench_cell.py --device cuda --repeats 50
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's enas_rnn, not an installed one

import torch  # noqa: E402
from torch import nn  # noqa: E402

from enas_rnn import native  # noqa: E402
from enas_rnn.cells import FixedCell, SharedCell  # noqa: E402
from enas_rnn.genotype import get_named  # noqa: E402
from enas_rnn.runs import flush_denormals  # noqa: E402
from enas_rnn.spaces import make_space  # noqa: E402
from enas_rnn.spaces.lstm import copy_from_nn_lstm  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(module: nn.Module, x: torch.Tensor, genotype=None) -> Callable[[], None]:
    """One forward + backward of ``module`` on ``x`` (loss = sum of outputs)."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        if isinstance(module, nn.LSTM):
            out, _ = module(x)
        elif genotype is None:
            out, _ = module(x, None)
        else:
            out, _ = module(x, None, genotype)
        out.sum().backward()

    return step


def random_cell(seed: int, min_live: int = 6):
    """First seeded 8-node lstm-space sample that reads x and has at least ``min_live`` live nodes."""
    space = make_space("lstm", 8)
    for s in range(seed, seed + 10_000):
        g = space.sample(s)
        if g.depends_on_input() and len(g.live_nodes()) >= min_live:
            return g
    raise RuntimeError("no suitable random cell found")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--input", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bptt", type=int, default=35)
    p.add_argument("--repeats", type=int, default=30, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch default)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, inputs and the random cell")
    p.add_argument("--state-clip", type=float, default=25.0, help="cells' guard (<= 0: off)")
    p.add_argument("--compile", action="store_true", help="also time FixedCell(lstm) with torch.compile")
    p.add_argument(
        "--timer",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter (tokens/s as users see it); cpu: process CPU time, robust to "
        "other processes on a shared machine (meaningful with --threads 1)",
    )
    p.add_argument("--only", default="", help="comma-separated subset of variant names")
    args = p.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    flush_denormals()  # the float mode every app runs with (enas_rnn.runs.resolve_device)
    torch.manual_seed(args.seed)
    E, H, B, T = args.input, args.hidden, args.batch, args.bptt
    clip = args.state_clip if args.state_clip > 0 else None
    x = torch.randn(T, B, E, device=device, requires_grad=True)

    lstm = nn.LSTM(E, H).to(device)
    lstm_g = get_named("lstm")
    enas_g = get_named("enas_paper")
    rand_g = random_cell(args.seed)

    fixed = FixedCell(lstm_g, E, H, state_clip=clip).to(device)
    copy_from_nn_lstm(fixed, lstm)
    shared_lstm = SharedCell("lstm", E, H, num_nodes=8, state_clip=clip).to(device)
    copy_from_nn_lstm(shared_lstm, lstm)
    shared_enas = SharedCell("enas", E, H, num_nodes=enas_g.num_nodes, state_clip=clip).to(device)

    variants: dict[str, Callable[[], None]] = {
        "nn.LSTM": make_step(lstm, x),
        "FixedCell(lstm)": make_step(fixed, x),
        "SharedCell(lstm)": make_step(shared_lstm, x, lstm_g),
        "SharedCell(enas_paper)": make_step(shared_enas, x, enas_g),
        "SharedCell(random lstm-space)": make_step(shared_lstm, x, rand_g),
    }
    if args.compile:
        compiled = FixedCell(lstm_g, E, H, state_clip=clip, compile=True).to(device)
        copy_from_nn_lstm(compiled, lstm)
        variants["FixedCell(lstm, compiled)"] = make_step(compiled, x)
    if args.only:
        keep = {"nn.LSTM", *[s.strip() for s in args.only.split(",")]}
        variants = {k: v for k, v in variants.items() if k in keep}

    for step in variants.values():
        for _ in range(args.warmup):
            step()
    _sync(device)
    clock = time.perf_counter if args.timer == "wall" else time.process_time
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, step in variants.items():  # round-robin: background load spreads evenly
            _sync(device)
            t0 = clock()
            step()
            _sync(device)
            times[name].append(clock() - t0)

    base = statistics.median(times["nn.LSTM"])
    results = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name] = {
            "median_ms": round(med * 1e3, 3),
            "tokens_per_s": round(B * T / med, 1),
            "time_vs_nn_lstm": round(med / base, 3),
        }
    if "FixedCell(lstm)" in results and "SharedCell(lstm)" in results:
        ratio = results["SharedCell(lstm)"]["median_ms"] / results["FixedCell(lstm)"]["median_ms"]
        results["SharedCell(lstm)"]["time_vs_fixed_lstm"] = round(ratio, 3)
    report = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "timer": args.timer,
        "torch": torch.__version__,
        # the enas loop's C++ build (CPU float32); ENAS_RNN_NATIVE=0 times the PyTorch loop instead
        "native_enas_loop": "on" if native.available() else f"off ({native.reason()})",
        "python": platform.python_version(),
        "shape": {"input": E, "hidden": H, "batch": B, "bptt": T},
        "state_clip": clip,
        "repeats": args.repeats,
        "random_cell": {"hash": rand_g.hash(), "live_nodes": len(rand_g.live_nodes())},
        "results": results,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return report


if __name__ == "__main__":
    main()
