#!/usr/bin/env python
"""Benchmark the search's own shared step and controller step against a 1-layer nn.LSTM LM.

Every variant runs the real code of ``enas-search`` (a ``SearchRun`` built from the composed Hydra
config): a *shared step* is ``SearchRun.shared_phase`` with ``search.shared_steps=1`` (sample a
child, one BPTT window of the supernet LM, backward, clip, SGD with weight decay), a *controller
step* is ``SearchRun.controller_step`` (propose a child, evaluate it on one validation window with
the shared weights, REINFORCE update). The baseline is the same LM with ``model.core=lstm`` (one
nn.LSTM layer) trained by the same loop (``enas_rnn.train.train_steps``) with the same optimiser.
A large sgemm of the decoder's shape ([T*B, H] x [H, V]) is timed in the same rounds, so the
achieved GFLOP/s can be read as a share of what one GEMM reaches on this machine right now.

All variants are warmed up, then timed round-robin (``--repeats`` rounds: background load spreads
over all of them alike); the median step is reported, and ratios come from the same run.
``--timer cpu`` (process CPU time) with ``--threads 1`` is robust to other jobs on a shared machine.

FLOP count (analytic, GEMMs only, 2 FLOPs per multiply-add; backward = 2 x forward: one GEMM for
the input's gradient, one for the weight's; elementwise ops, the embedding gather and the softmax
are not counted), per token:

    decoder (tied):            fwd 2*H*V
    nn.LSTM:                   fwd 2*(E+H)*4H
    enas cell, N nodes:        fwd 2*(E+H)*2H (highway node 1) + (N-1) * 2*H*2H (one edge per node)
    lstm cell, k live xh maps: fwd k * 2*(E+H)*H   (k of the child that ran; nodes are elementwise)

so a shared step costs 3 * tokens * (cell + decoder). ``vs_nn_lstm_lm`` is the shared step's tokens/s
over the nn.LSTM LM's; ``vs_nn_lstm_lm_at_equal_gflops`` is what that ratio would be if both ran their
GEMM FLOPs at the same rate (the LM's FLOPs per token over the step's): a step can beat it only by
running its FLOPs faster than nn.LSTM's fused kernel and the shared decoder do. The controller step is reported as time per
step and tokens/s of the evaluated window (its REINFORCE update is not counted in FLOPs).

Threads: ``--threads 1,2`` times every variant at each count in the same rounds (``torch.set_num_threads``
before each call, the counts' order alternating round by round), wall time; ``results_by_threads`` holds
each count's table and ``speedup`` each variant's ratio over the first count, of the median calls and of
the fastest (the least disturbed on a shared machine). ``--timer cpu`` is refused above one thread: process
CPU time adds up the threads.

Roofline (per thread count, from the same rounds): the sgemm's GFLOP/s and a ``--copy-mib`` memory copy
(``dst.copy_(src)``; GB/s counts the bytes read + written, as STREAM's copy does). Each shared step then
gets two upper bounds on its tokens/s:

    FLOP bound    = sgemm rate / (GEMM FLOPs per token, the count above)
    memory bound  = copy rate  / (recurrent-weight bytes per token)

and ``bound`` names the tighter one. The bytes: the time loop cannot be blocked across time steps (step
t + 1's GEMM needs step t's state, and the backward's step t needs step t + 1's gradient), so every time
step reads every recurrent weight of the child once in the forward and once more (its W^T copy) in the
backward's reverse loop, while the batch's B rows share each read. An enas cell of N nodes has N weights
[H, 2H] (node 1's h-part w1 and one per edge; node 1's x-part is one GEMM over the window, hoisted out of the
loop, and so are all weight gradients):

    enas:  2 * N * (H * 2H) * 4 bytes per time step   (12 nodes, H = 1000: 2 x 96 MB; per token / B)
    lstm:  2 * k * (H * H) * 4 bytes per time step    (W_rec's h-part of the k live maps)

Activations (states, gates: ~12 * 3H floats per token and pass) and the decoder's weight (read once per
window by a [T*B, H] x [H, V] GEMM) are not counted. When the weights fit in the last-level cache (enas at
H = 256: 2 x 6.3 MB against ``l3_mib``) they are read from it, not from memory, and the memory bound is moot.

    python scripts/bench_shared.py --threads 1 --timer cpu
    python scripts/bench_shared.py --threads 1,2 --repeats 5          # thread scaling + roofline, wall time
    python scripts/bench_shared.py --threads 1 --timer cpu --configs enas-1000@32,enas-1000,enas-1000@128 --no-lstm
    python scripts/bench_shared.py --device cuda --repeats 20
    python scripts/bench_shared.py --configs enas-256 --repeats 5 --profile   # torch.profiler table
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's enas_rnn, not an installed one

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from enas_rnn import native  # noqa: E402
from enas_rnn.conf import register_configs  # noqa: E402
from enas_rnn.genotype import Genotype  # noqa: E402
from enas_rnn.model import build_model  # noqa: E402
from enas_rnn.runs import (
    flush_denormals,  # noqa: E402
    load_splits,  # noqa: E402
)
from enas_rnn.search import SearchRun  # noqa: E402
from enas_rnn.train import LoopState, train_steps  # noqa: E402


@dataclass(frozen=True)
class BenchConfig:
    """One row of the table: a space and sizes (E = H, tied weights, T = 35 as ENAS-pytorch)."""

    name: str
    space: str
    num_nodes: int
    hidden: int
    batch: int


CONFIGS: dict[str, BenchConfig] = {
    "enas-256": BenchConfig("enas-256", "enas", 12, 256, 32),
    "enas-1000": BenchConfig("enas-1000", "enas", 12, 1000, 64),
    "lstm-256": BenchConfig("lstm-256", "lstm", 8, 256, 32),
}


def compose_search(c: BenchConfig, data_root: Path, device: str, bptt: int, seed: int) -> DictConfig:
    """The real enas-search config (conf/search.yaml) at the bench sizes."""
    overrides = [
        f"space={c.space}", f"space.num_nodes={c.num_nodes}",
        f"model.emb_size={c.hidden}", f"model.hidden_size={c.hidden}",
        f"data.batch_size={c.batch}", f"data.bptt={bptt}", f"data.root={data_root}",
        "search.shared_steps=1", "search.children_per_step=1", "search.reward_batches=1",
        "train.progress=false", f"device={device}", f"seed={seed}",
    ]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="search", overrides=overrides)


def size_key(c: BenchConfig) -> str:
    """``H/B``: variants of one size share the nn.LSTM LM and the sgemm."""
    return f"{c.hidden}/{c.batch}"


def flops_per_token(kind: str, E: int, H: int, V: int, k: int = 0, N: int = 0) -> float:
    """Forward GEMM FLOPs per token of the LM (see the module docstring)."""
    dec = 2 * H * V
    if kind == "nn.LSTM":
        return dec + 2 * (E + H) * 4 * H
    if kind == "enas":
        return dec + 2 * (E + H) * 2 * H + (N - 1) * 2 * H * 2 * H
    if kind == "lstm":
        return dec + k * 2 * (E + H) * H
    raise ValueError(kind)


def parse_config(spec: str) -> BenchConfig:
    """A name of CONFIGS, optionally ``name@B`` for another batch size (``enas-1000@128``: the batch experiment)."""
    name, _, batch = spec.partition("@")
    if name not in CONFIGS:
        raise SystemExit(f"unknown config {name!r}; valid: {', '.join(CONFIGS)} (optionally with @<batch>)")
    if not batch:
        return CONFIGS[name]
    if not batch.isdigit() or int(batch) < 1:
        raise SystemExit(f"bad batch size in {spec!r}")
    return dataclasses.replace(CONFIGS[name], name=spec, batch=int(batch))


def weight_bytes_per_step(kind: str, H: int, k: int = 0, N: int = 0) -> float:
    """Bytes of recurrent weights the time loop reads per time step, forward + reverse loop (see the docstring)."""
    if kind == "enas":  # w1 [H, 2H] and N - 1 edges [H, 2H], each read once by the forward, its W^T by the backward
        return 2.0 * N * H * 2 * H * 4
    if kind == "lstm":  # W_rec [H, kH] (the h-part of the k live maps), and its W^T
        return 2.0 * k * H * H * 4
    raise ValueError(kind)


@dataclass
class Timing:
    """What the timed calls of one variant at one thread count recorded."""

    times: list[float] = field(default_factory=list)
    work: list[float] = field(default_factory=list)  # FLOPs of each timed call (children differ)
    wbytes: list[float] = field(default_factory=list)  # recurrent-weight bytes of each timed call
    minflt: list[int] = field(default_factory=list)
    sys: list[float] = field(default_factory=list)


class Variant:
    """A timed callable and how to count its work."""

    def __init__(self, name: str, step: Callable[[], None], tokens: int, flops: Callable[[], float] | None,
                 moved_bytes: float | None = None, weight_bytes: Callable[[], float] | None = None, batch: int = 0) -> None:
        self.name, self.step, self.tokens, self.flops = name, step, tokens, flops
        self.moved_bytes = moved_bytes  # bytes read + written per call (the copy)
        self.weight_bytes = weight_bytes  # recurrent-weight bytes streamed per time step (the shared steps)
        self.batch = batch  # rows per time step: a time step's weight bytes are spread over this many tokens
        self.timings: dict[int, Timing] = {}

    def at(self, threads: int) -> Timing:
        return self.timings.setdefault(threads, Timing())


def shared_variants(c: BenchConfig, cfg: DictConfig, run_dir: Path) -> tuple[list[Variant], SearchRun]:
    """Shared step and controller step of a real SearchRun."""
    run = SearchRun(cfg, run_dir)
    run.history_file = open(os.devnull, "w")
    V = len(run.splits.corpus.vocab)
    E = H = c.hidden
    T, B = int(cfg.data.bptt), int(cfg.data.batch_size)
    last: dict[str, Genotype] = {}
    sample = run.strategy.sample_for_training

    def recording_sample(*args: Any, **kwargs: Any) -> Any:
        # Pass-through (whatever the strategy's signature): remember the child for the FLOP count.
        got = sample(*args, **kwargs)
        last["g"] = got[0] if isinstance(got, tuple) else got
        return got

    run.strategy.sample_for_training = recording_sample  # type: ignore[method-assign]
    cell = run.model.cores[0]

    def live_maps() -> int:
        return len(cell.plan(last["g"]).keys) if c.space == "lstm" else 0

    def shared_flops() -> float:
        return 3.0 * T * B * flops_per_token(c.space, E, H, V, k=live_maps(), N=last["g"].num_nodes)

    def shared_weight_bytes() -> float:
        return weight_bytes_per_step(c.space, H, k=live_maps(), N=last["g"].num_nodes)

    def shared_step() -> None:
        if run.loop.pos + T + 1 >= run.splits.train.size(0):
            run.loop.pos = 0
        # shared_phase continues the epoch where it stopped (a resumed search must not redo windows), so each
        # timed call starts a fresh phase of one window; a call that trained nothing would time nothing.
        run.state.shared_done = 0
        before = run.loop.step
        run.shared_phase()
        if run.loop.step == before:
            raise RuntimeError("bench_shared: the shared step trained no window (SearchRun.shared_phase changed?)")

    Tv, Bv = int(cfg.data.bptt), int(cfg.data.eval_batch_size)
    return [
        Variant(f"{c.name} shared step", shared_step, T * B, shared_flops, weight_bytes=shared_weight_bytes,
                batch=B),
        Variant(f"{c.name} controller step", run.controller_step, Tv * Bv, None),
    ], run


def lstm_variant(c: BenchConfig, cfg: DictConfig, device: torch.device) -> tuple[Variant, Any]:
    """One window of a 1-layer nn.LSTM LM of the same sizes, same loop and optimiser."""
    run_cfg = cfg.copy()
    with open_dict(run_cfg):
        run_cfg.model.core = "lstm"
    splits = load_splits(run_cfg.data, device)
    V = len(splits.corpus.vocab)
    torch.manual_seed(0)
    model = build_model(run_cfg.model, V).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=run_cfg.train.lr, weight_decay=run_cfg.train.weight_decay)
    state = LoopState(lr=run_cfg.train.lr)
    T, B = int(cfg.data.bptt), int(cfg.data.batch_size)

    def step() -> None:
        if state.pos + T + 1 >= splits.train.size(0):
            state.pos = 0
        train_steps(model, opt, splits.train, state, run_cfg.train, run_cfg.data, 1)

    E = H = c.hidden
    return Variant(f"nn.LSTM LM {size_key(c)}", step, T * B, lambda: 3.0 * T * B * flops_per_token("nn.LSTM", E, H, V)), model


def sgemm_variant(c: BenchConfig, V: int, T: int, device: torch.device) -> Variant:
    """[T*B, H] x [H, V]: the decoder's GEMM, the largest of the step."""
    a = torch.randn(T * c.batch, c.hidden, device=device)
    b = torch.randn(c.hidden, V, device=device)
    out = torch.empty(T * c.batch, V, device=device)
    return Variant(f"sgemm {size_key(c)} [{T * c.batch}x{c.hidden}]x[{c.hidden}x{V}]", lambda: torch.mm(a, b, out=out), 0,
                   lambda: 2.0 * T * c.batch * c.hidden * V)


def copy_variant(mib: int, device: torch.device) -> Variant:
    """``dst.copy_(src)`` of ``mib`` MiB: the memory rate, counted as bytes read + written (as STREAM's copy)."""
    n = mib * 2**20 // 4
    src = torch.full((n,), 1.0, device=device)
    dst = torch.empty(n, device=device)
    return Variant(f"copy {mib} MiB", lambda: dst.copy_(src), 0, None, moved_bytes=2.0 * n * 4)


def parse_threads(spec: str) -> list[int]:
    """``1,2`` -> [1, 2]; 0 stands for torch's default (resolved here)."""
    try:
        counts = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--threads takes comma-separated integers, got {spec!r}") from None
    if not counts or any(n < 0 for n in counts):
        raise SystemExit(f"--threads takes comma-separated integers >= 0, got {spec!r}")
    default = torch.get_num_threads()
    return list(dict.fromkeys(n if n > 0 else default for n in counts))


def l3_bytes() -> int | None:
    """The last-level cache of CPU 0 (Linux sysfs), or None."""
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    except OSError:
        return None
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def summarise(variants: list[Variant], threads: int, copy_rate: float | None) -> dict[str, dict[str, Any]]:
    """The results of one thread count: per variant its rates, and for the shared steps their bounds."""
    sgemm_rate: dict[str, float] = {}  # size key -> GFLOP/s
    lstm_tps: dict[str, float] = {}  # size key -> tokens/s of the nn.LSTM LM
    lstm_fpt: dict[str, float] = {}  # size key -> the nn.LSTM LM's FLOPs per token
    fpt: dict[str, float] = {}  # variant -> FLOPs per token (mean over the timed calls)
    wpt: dict[str, float] = {}  # variant -> recurrent-weight bytes per token
    results: dict[str, dict[str, Any]] = {}
    for v in variants:
        tm = v.at(threads)
        med = statistics.median(tm.times)
        row: dict[str, Any] = {"median_ms": round(med * 1e3, 2), "min_ms": round(min(tm.times) * 1e3, 2)}
        if v.tokens:
            row["tokens_per_s"] = round(v.tokens / med, 1)
        if v.flops is not None:
            row["gflop_per_s"] = round(sum(tm.work) / sum(tm.times) / 1e9, 2)
        if v.moved_bytes is not None:
            row["gb_per_s"] = round(v.moved_bytes / med / 1e9, 2)
        row["minor_faults_per_step"] = int(statistics.median(tm.minflt))
        row["sys_ms_per_step"] = round(statistics.median(tm.sys) * 1e3, 1)
        if v.name.startswith("sgemm"):
            sgemm_rate[v.name.split()[1]] = row["gflop_per_s"]
        if v.flops is not None and v.tokens:
            fpt[v.name] = statistics.fmean(tm.work) / v.tokens
        if v.name.startswith("nn.LSTM"):
            lstm_tps[v.name.split()[-1]] = row["tokens_per_s"]
            lstm_fpt[v.name.split()[-1]] = fpt[v.name]
        if v.weight_bytes is not None and tm.wbytes:
            row["weight_mb_per_time_step"] = round(statistics.fmean(tm.wbytes) / 1e6, 2)
            wpt[v.name] = statistics.fmean(tm.wbytes) / v.batch
            row["weight_mb_per_token"] = round(wpt[v.name] / 1e6, 4)
        results[v.name] = row
    for name, row in results.items():
        key = name.split()[1] if name.startswith("sgemm") else name.split()[-1] if name.startswith("nn.LSTM") \
            else size_key(parse_config(name.split()[0])) if not name.startswith("copy") else None
        if "gflop_per_s" in row and not name.startswith("sgemm") and key in sgemm_rate:
            row["share_of_sgemm"] = round(row["gflop_per_s"] / sgemm_rate[key], 3)
        if "shared step" in name:
            if key in lstm_tps:
                row["vs_nn_lstm_lm"] = round(row["tokens_per_s"] / lstm_tps[key], 3)
                # the ratio this step would have at the nn.LSTM LM's GFLOP/s: FLOPs per token, LSTM / this
                row["vs_nn_lstm_lm_at_equal_gflops"] = round(lstm_fpt[key] / fpt[name], 3)
            # Roofline: the most tokens/s the step could run at if its FLOPs ran at the same run's sgemm
            # rate, or if its recurrent weights streamed at the same run's copy rate; the tighter one is the limit.
            bounds: dict[str, float] = {}
            if key in sgemm_rate:
                bounds["flop"] = sgemm_rate[key] * 1e9 / fpt[name]
                row["flop_bound_tokens_per_s"] = round(bounds["flop"], 1)
            if copy_rate is not None and name in wpt:
                bounds["memory"] = copy_rate * 1e9 / wpt[name]
                row["memory_bound_tokens_per_s"] = round(bounds["memory"], 1)
            if bounds:
                kind = min(bounds, key=bounds.__getitem__)
                row["bound"] = kind
                row["share_of_bound"] = round(row["tokens_per_s"] / bounds[kind], 3)
    return results


def table(report: dict[str, Any]) -> str:
    """The report as one markdown table (printed before the JSON, which stays the last thing on stdout)."""
    counts: list[int] = report["thread_counts"]
    by = report["results_by_threads"]
    base = counts[0]
    head = ["variant"] + [f"{n}T" for n in counts] + [f"{n}T/{base}T" for n in counts[1:]] + \
        ["share of sgemm", "FLOP bound tok/s", "memory bound tok/s", "bound", "share of bound"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def rate(row: dict[str, Any]) -> str:
        if "tokens_per_s" in row:
            return f"{row['tokens_per_s']:,.0f} tok/s"
        if "gb_per_s" in row:
            return f"{row['gb_per_s']:.1f} GB/s"
        return f"{row['gflop_per_s']:.1f} GFLOP/s"

    def per_count(row_of: Callable[[int], dict[str, Any]], key: str, fmt: str) -> str:
        vals = [row_of(n).get(key) for n in counts]
        return " / ".join("-" if x is None else format(x, fmt) for x in vals) if any(x is not None for x in vals) else ""

    for name in by[str(base)]:
        rows = {n: by[str(n)][name] for n in counts}
        cells = [name] + [rate(rows[n]) for n in counts]
        cells += [f"{report['speedup'][name][f'{n}/{base}']:.2f}x" for n in counts[1:]]
        cells += [per_count(lambda n: rows[n], "share_of_sgemm", ".3f"),
                  per_count(lambda n: rows[n], "flop_bound_tokens_per_s", ",.0f"),
                  per_count(lambda n: rows[n], "memory_bound_tokens_per_s", ",.0f"),
                  " / ".join(rows[n]["bound"] for n in counts) if "bound" in rows[base] else "",
                  per_count(lambda n: rows[n], "share_of_bound", ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def find_data(arg: str | None) -> Path:
    """PTB: --data, then $ENAS_RNN_DATA/ptb, then ./data/ptb."""
    cands = [Path(arg)] if arg else []
    if os.environ.get("ENAS_RNN_DATA"):
        cands.append(Path(os.environ["ENAS_RNN_DATA"]) / "ptb")
    cands += [REPO / "data" / "ptb", REPO.parent / "shared" / "data" / "ptb"]
    for p in cands:
        if all((p / f).is_file() for f in ("train.txt", "valid.txt", "test.txt")):
            return p
    raise SystemExit(f"PTB not found in {[str(p) for p in cands]}: pass --data <folder with train/valid/test.txt>")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated subset of {', '.join(CONFIGS)}; name@B runs it at batch size B")
    p.add_argument("--bptt", type=int, default=35)
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds per thread count")
    p.add_argument("--threads", default="0",
                   help="torch.set_num_threads, comma-separated (1,2: both timed in the same rounds; 0: torch default)")
    p.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                   help="cpu: process CPU time (only with --threads 1, on a shared machine); cuda forces wall")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="PTB folder (default: $ENAS_RNN_DATA/ptb)")
    p.add_argument("--no-controller", action="store_true", help="skip the controller steps")
    p.add_argument("--no-lstm", action="store_true", help="skip the nn.LSTM LM baselines")
    p.add_argument("--copy-mib", type=int, default=256, help="size of the timed memory copy (0: none)")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table per shared step variant")
    p.add_argument("--json", default=None, help="also write the report here")
    p.add_argument("--keep-denormals", action="store_true",
                   help="do not flush denormal floats to zero (the apps do; this measures what that saves)")
    args = p.parse_args(argv)

    counts = parse_threads(args.threads)
    device = torch.device(args.device)
    timer = "wall" if device.type == "cuda" else args.timer
    if timer == "cpu" and max(counts) > 1:
        # process CPU time sums every thread's: it cannot show a speed-up from threads
        raise SystemExit("--timer cpu needs --threads 1 (with more threads use --timer wall)")
    torch.set_num_threads(counts[0])
    flush_denormals()  # the float mode every app runs with (enas_rnn.runs.resolve_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available here")
    clock = time.perf_counter if timer == "wall" else time.process_time
    register_configs()
    data_root = find_data(args.data)
    tmp = tempfile.TemporaryDirectory(prefix="bench_shared_")

    variants: list[Variant] = []
    sizes: set[str] = set()
    keep_alive: list[Any] = []
    for spec in [s.strip() for s in args.configs.split(",") if s.strip()]:
        c = parse_config(spec)
        cfg = compose_search(c, data_root, args.device, args.bptt, args.seed)
        vs, run = shared_variants(c, cfg, Path(tmp.name) / spec.replace("@", "_b"))
        variants += vs if not args.no_controller else vs[:1]
        keep_alive.append(run)
        if size_key(c) not in sizes:
            sizes.add(size_key(c))
            if not args.no_lstm:
                lv, model = lstm_variant(c, cfg, device)
                variants.append(lv)
                keep_alive.append(model)
            variants.append(sgemm_variant(c, len(run.splits.corpus.vocab), args.bptt, device))
    if args.copy_mib > 0:
        variants.append(copy_variant(args.copy_mib, device))

    if args.keep_denormals:  # after SearchRun, which set the apps' mode
        torch.set_flush_denormal(False)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for n in counts:
        torch.set_num_threads(n)
        for v in variants:
            for _ in range(args.warmup):
                v.step()
    sync()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        for n in counts:
            torch.set_num_threads(n)
            for v in variants:
                if "shared step" in v.name or "nn.LSTM" in v.name:
                    with profile(activities=acts) as prof:
                        v.step()
                        sync()
                    print(f"== {v.name}, {n} thread(s)", file=sys.stderr)
                    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
    for r in range(args.repeats):
        for v in variants:
            # Thread counts alternate their order every round: neither always runs right after another variant.
            for n in counts if r % 2 == 0 else counts[::-1]:
                if len(counts) > 1:
                    torch.set_num_threads(n)
                tm = v.at(n)
                sync()
                r0 = resource.getrusage(resource.RUSAGE_SELF)
                t0 = clock()
                v.step()
                sync()
                t1 = clock()
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                tm.times.append(t1 - t0)
                tm.work.append(v.flops() if v.flops is not None else 0.0)
                if v.weight_bytes is not None:
                    tm.wbytes.append(v.weight_bytes())
                tm.minflt.append(r1.ru_minflt - r0.ru_minflt)
                tm.sys.append(r1.ru_stime - r0.ru_stime)

    by_threads: dict[str, dict[str, dict[str, Any]]] = {}
    copy_rates: dict[int, float] = {}
    for n in counts:
        copy_rows = [v for v in variants if v.moved_bytes is not None]
        if copy_rows:
            copy_rates[n] = copy_rows[0].moved_bytes / statistics.median(copy_rows[0].at(n).times) / 1e9
        by_threads[str(n)] = summarise(variants, n, copy_rates.get(n))
    base = counts[0]
    # Speed-up of every variant at each thread count over the first, from the same rounds: of the medians,
    # and of the fastest calls (the least disturbed by other jobs on a shared machine).
    speedup: dict[str, dict[str, float]] = {}
    for v in variants:
        t0s = v.at(base).times
        speedup[v.name] = {}
        for n in counts[1:]:
            ts = v.at(n).times
            speedup[v.name][f"{n}/{base}"] = round(statistics.median(t0s) / statistics.median(ts), 3)
            speedup[v.name][f"{n}/{base} (min)"] = round(min(t0s) / min(ts), 3)
    l3 = l3_bytes()
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": base,
        "thread_counts": counts,
        "timer": timer,
        "torch": torch.__version__,
        "denormals": "kept" if args.keep_denormals else "flushed to zero",
        # the enas loop's C++ build (CPU float32); ENAS_RNN_NATIVE=0 times the PyTorch loop instead
        "native_enas_loop": "on" if native.available() else f"off ({native.reason()})",
        "bptt": args.bptt,
        "repeats": args.repeats,
        "data": str(data_root),
        "l3_mib": None if l3 is None else round(l3 / 2**20, 1),
        # the same run's rates at each thread count: the roofline of the shared steps
        "roofline": {str(n): {"copy_gb_per_s": round(copy_rates[n], 2) if n in copy_rates else None,
                              "sgemm_gflop_per_s": {k.split()[1]: row["gflop_per_s"] for k, row in by_threads[str(n)].items()
                                                    if k.startswith("sgemm")}} for n in counts},
        "results": by_threads[str(base)],  # the first thread count's (what one-count runs always reported)
        "results_by_threads": by_threads,
        "speedup": speedup if len(counts) > 1 else {},
    }
    text = json.dumps(report, indent=2)
    # The table first: the JSON stays the last object on stdout (scripts/gpu_check.py reads that one).
    print(table(report))
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    tmp.cleanup()
    return report


if __name__ == "__main__":
    main()
