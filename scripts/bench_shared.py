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

    python scripts/bench_shared.py --threads 1 --timer cpu
    python scripts/bench_shared.py --device cuda --repeats 20
    python scripts/bench_shared.py --configs enas-256 --repeats 5 --profile   # torch.profiler table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
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


class Variant:
    """A timed callable and how to count its work."""

    def __init__(self, name: str, step: Callable[[], None], tokens: int, flops: Callable[[], float] | None) -> None:
        self.name, self.step, self.tokens, self.flops = name, step, tokens, flops
        self.times: list[float] = []
        self.work: list[float] = []  # FLOPs of each timed call (children differ)
        self.minflt: list[int] = []
        self.sys: list[float] = []


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

    def shared_flops() -> float:
        g = last["g"]
        k = len(cell.plan(g).keys) if c.space == "lstm" else 0
        return 3.0 * T * B * flops_per_token(c.space, E, H, V, k=k, N=g.num_nodes)

    def shared_step() -> None:
        if run.loop.pos + T + 1 >= run.splits.train.size(0):
            run.loop.pos = 0
        run.shared_phase()

    Tv, Bv = int(cfg.data.bptt), int(cfg.data.eval_batch_size)
    return [
        Variant(f"{c.name} shared step", shared_step, T * B, shared_flops),
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
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {', '.join(CONFIGS)}")
    p.add_argument("--bptt", type=int, default=35)
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch default)")
    p.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                   help="cpu: process CPU time (use with --threads 1 on a shared machine); cuda forces wall")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="PTB folder (default: $ENAS_RNN_DATA/ptb)")
    p.add_argument("--no-controller", action="store_true", help="skip the controller steps")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table per shared step variant")
    p.add_argument("--json", default=None, help="also write the report here")
    p.add_argument("--keep-denormals", action="store_true",
                   help="do not flush denormal floats to zero (the apps do; this measures what that saves)")
    args = p.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    flush_denormals()  # the float mode every app runs with (enas_rnn.runs.resolve_device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available here")
    timer = "wall" if device.type == "cuda" else args.timer
    clock = time.perf_counter if timer == "wall" else time.process_time
    register_configs()
    data_root = find_data(args.data)
    tmp = tempfile.TemporaryDirectory(prefix="bench_shared_")

    variants: list[Variant] = []
    sizes: set[str] = set()
    keep_alive: list[Any] = []
    for name in [s.strip() for s in args.configs.split(",") if s.strip()]:
        if name not in CONFIGS:
            raise SystemExit(f"unknown config {name!r}; valid: {', '.join(CONFIGS)}")
        c = CONFIGS[name]
        cfg = compose_search(c, data_root, args.device, args.bptt, args.seed)
        vs, run = shared_variants(c, cfg, Path(tmp.name) / name)
        variants += vs if not args.no_controller else vs[:1]
        keep_alive.append(run)
        if size_key(c) not in sizes:
            sizes.add(size_key(c))
            lv, model = lstm_variant(c, cfg, device)
            variants.append(lv)
            keep_alive.append(model)
            variants.append(sgemm_variant(c, len(run.splits.corpus.vocab), args.bptt, device))

    if args.keep_denormals:  # after SearchRun, which set the apps' mode
        torch.set_flush_denormal(False)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for v in variants:
        for _ in range(args.warmup):
            v.step()
    sync()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        for v in variants:
            if "shared step" in v.name or "nn.LSTM" in v.name:
                with profile(activities=acts) as prof:
                    v.step()
                    sync()
                print(f"== {v.name}", file=sys.stderr)
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
    for _ in range(args.repeats):
        for v in variants:
            sync()
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = clock()
            v.step()
            sync()
            t1 = clock()
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            v.times.append(t1 - t0)
            v.work.append(v.flops() if v.flops is not None else 0.0)
            v.minflt.append(r1.ru_minflt - r0.ru_minflt)
            v.sys.append(r1.ru_stime - r0.ru_stime)

    sgemm_rate: dict[str, float] = {}  # size key -> GFLOP/s
    lstm_tps: dict[str, float] = {}  # size key -> tokens/s of the nn.LSTM LM
    lstm_fpt: dict[str, float] = {}  # size key -> the nn.LSTM LM's FLOPs per token
    fpt: dict[str, float] = {}  # variant -> FLOPs per token (mean over the timed calls)
    results: dict[str, dict[str, Any]] = {}
    for v in variants:
        med = statistics.median(v.times)
        row: dict[str, Any] = {"median_ms": round(med * 1e3, 2), "min_ms": round(min(v.times) * 1e3, 2)}
        if v.tokens:
            row["tokens_per_s"] = round(v.tokens / med, 1)
        if v.flops is not None:
            row["gflop_per_s"] = round(sum(v.work) / sum(v.times) / 1e9, 2)
        row["minor_faults_per_step"] = int(statistics.median(v.minflt))
        row["sys_ms_per_step"] = round(statistics.median(v.sys) * 1e3, 1)
        if v.name.startswith("sgemm"):
            sgemm_rate[v.name.split()[1]] = row["gflop_per_s"]
        if v.flops is not None and v.tokens:
            fpt[v.name] = statistics.fmean(v.work) / v.tokens
        if v.name.startswith("nn.LSTM"):
            lstm_tps[v.name.split()[-1]] = row["tokens_per_s"]
            lstm_fpt[v.name.split()[-1]] = fpt[v.name]
        results[v.name] = row
    for name, row in results.items():
        key = name.split()[1] if name.startswith("sgemm") else name.split()[-1] if name.startswith("nn.LSTM") \
            else size_key(CONFIGS[name.split()[0]])
        if "gflop_per_s" in row and not name.startswith("sgemm"):
            row["share_of_sgemm"] = round(row["gflop_per_s"] / sgemm_rate[key], 3)
        if "shared step" in name:
            row["vs_nn_lstm_lm"] = round(row["tokens_per_s"] / lstm_tps[key], 3)
            # the ratio this step would have at the nn.LSTM LM's GFLOP/s: FLOPs per token, LSTM / this
            row["vs_nn_lstm_lm_at_equal_gflops"] = round(lstm_fpt[key] / fpt[name], 3)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "timer": timer,
        "torch": torch.__version__,
        "denormals": "kept" if args.keep_denormals else "flushed to zero",
        # the enas loop's C++ build (CPU float32); ENAS_RNN_NATIVE=0 times the PyTorch loop instead
        "native_enas_loop": "on" if native.available() else f"off ({native.reason()})",
        "bptt": args.bptt,
        "repeats": args.repeats,
        "data": str(data_root),
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    tmp.cleanup()
    return report


if __name__ == "__main__":
    main()
