#!/usr/bin/env python
"""Reproduce the MRS sine-wave study: does MRS predict the MAE reached by training?

Setup (taken from the authors' code, github.com/acamero/dlopt, since the paper
text was not retrievable here):

* series: y(t) = A sin(2 pi f t + phi) with A = 1, f = 1, phi = 0, sampled
  every 0.1 (10 points per period); training t in [0, 100) (1000 points),
  test t in [100, 120) (200 points); no scaling, values already in [-1, 1]
  (``data/sin/config.json`` and ``SinDataReader`` in
  ``publications/caepia2018/util.py``).
* model: 1-3 stacked LSTM layers of equal width + a dense tanh output
  (``RNNBuilder``, ``dense_activation="tanh"``); input = the last
  ``look_back`` values, target = the next value.
* MRS: N(0, 1) weights, MAE on the test windows, normal truncated to
  [0, 2], t = 0.01 (``MAERandomSampling``). N = 100 here (30 in their configs).
* training: Adam on MSE, mini-batches in order (``shuffle=False``).
  Deviations, for a 10-minute CPU budget: lr 1e-3 (Keras' default; their
  script uses 5e-5 with early stopping, which barely moves in 100 epochs),
  batch 32, no dropout/early stopping, and one run per architecture evaluated
  after 1, 10 and 100 epochs (identical to separate 1/10/100-epoch runs from
  the same seed since nothing else depends on the epoch budget).
* trained MAE: one-step-ahead on the test windows (what MRS also sees). The
  CAEPIA'18 script (``rnn.py``) nominally defaults to free-running ("blind")
  prediction, but its caller passes ``verbose=0`` into the ``blind`` slot, so
  it too predicted one step ahead; ``--eval blind`` gives the free-running
  variant (both are always in the CSV).
* correlation: Pearson's r, as the authors' R analysis (``cor``) uses;
  Spearman's rho is shown as well.
* torch's LSTM has two bias vectors per gate (Keras: one), so a N(0, 1) draw
  gives gate biases of variance 2 here.

Usage: ``python scripts/mrs_sine.py`` (default grid: 72 architectures, ~6 min on an idle
2-core CPU, ~8-9 min with other jobs running),
``--quick`` (seconds, for tests), ``--full`` (adds 1000 epochs: about an hour).
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import math
import os
import platform
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from enas_rnn.scores.mrs import MRSConfig, mrs_score_regression
from enas_rnn.stats import pearson, spearman, to_markdown

# Published numbers. Source: Camero, Toutouh & Alba (2018), MRS extended to
# multiple hidden layers on the sine wave (CAEPIA 2018 workshop paper
# "Comparing deep recurrent networks based on the MAE random sampling, a first
# approach"). Pearson correlation of the trained MAE with the MRS mean, sd and
# log p. Only the cells below were available to us (from the project brief;
# the full table could not be retrieved), so other cells print as blank.
PUBLISHED: dict[str, Any] = {
    "citation": (
        "Camero, Toutouh & Alba 2018, 'Comparing deep recurrent networks based on "
        "the MAE random sampling, a first approach' (CAEPIA 2018), sine wave"
    ),
    # (hidden layers, epochs) -> Pearson r of trained MAE with MRS statistic
    "pearson": {
        (1, 100): {"mean": -0.790, "sd": -0.641, "log_p": -0.650},
        (3, 100): {"mean": -0.720, "sd": -0.869, "log_p": -0.906},
    },
    # seconds per architecture
    "seconds": {"adam_1000_epochs": 996.0, "mrs": 6.0},
}

STATS = ("mean", "sd", "log_p")


# --------------------------------------------------------------------------- data / model


def sine_series(start: float, stop: float, step: float = 0.1, amp: float = 1.0,
                freq: float = 1.0, phase: float = 0.0) -> Tensor:
    """A sin(2 pi f t + phi) on t = start, start+step, ... < stop (float32)."""
    n = int(round((stop - start) / step))
    t = start + step * np.arange(n)  # integer steps: no drift from repeated float adds
    return torch.from_numpy(amp * np.sin(2 * np.pi * freq * t + phase)).float()


def windows(series: Tensor, look_back: int) -> tuple[Tensor, Tensor]:
    """Inputs (B, look_back, 1) and next-value targets (B, 1)."""
    x = series.unfold(0, look_back, 1)[:-1]  # shape: (len - look_back, look_back)
    y = series[look_back:]
    return x.unsqueeze(-1), y.unsqueeze(-1)  # shape: (B, T, 1), (B, 1)


class StackedLSTM(nn.Module):
    """``layers`` LSTM layers of width ``hidden`` + dense tanh output (the authors' RNNBuilder)."""

    def __init__(self, layers: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.lstm(x)  # shape: (B, T, hidden)
        return torch.tanh(self.out(h[:, -1]))  # shape: (B, 1)


@torch.no_grad()
def mae_one_step(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Teacher-forced one-step-ahead MAE on windows."""
    model.eval()
    return float((model(x) - y).abs().mean())


@torch.no_grad()
def mae_blind(model: nn.Module, history: Tensor, target: Tensor, look_back: int) -> float:
    """Free-running MAE: start from the last training values, feed predictions back."""
    model.eval()
    window = history[-look_back:].clone()
    preds = []
    for _ in range(target.numel()):
        nxt = model(window.view(1, look_back, 1)).view(1)  # shape: (1, T, 1) -> (1,)
        preds.append(nxt)
        window = torch.cat([window[1:], nxt])
    return float((torch.cat(preds) - target).abs().mean())


# --------------------------------------------------------------------------- memory


class PeakMemory:
    """Peak resident memory above the starting level while the block runs (MiB).

    Torch's CPU tensors are invisible to tracemalloc, so we poll the process RSS
    (/proc/self/statm) from a thread; freed heap is first returned to the OS
    (glibc malloc_trim) so earlier work does not hide this block's growth. An
    approximation: short spikes between polls are missed, and allocator caching
    counts. Falls back to tracemalloc (Python objects only) without /proc.
    """

    _statm = Path("/proc/self/statm")
    _page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak_mib = math.nan
        self._use_proc = self._statm.exists()

    def _rss(self) -> int:
        return int(self._statm.read_text().split()[1]) * self._page

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        if self._use_proc:
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except OSError:
                pass
            self._base = self._peak = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        else:
            tracemalloc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._use_proc:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss())
            self.peak_mib = (self._peak - self._base) / 2**20
        else:
            self.peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()


# --------------------------------------------------------------------------- one architecture


def evaluate_architecture(layers: int, hidden: int, look_back: int, data: dict[str, Tensor],
                          args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """MRS statistics and Adam-trained MAEs (at each checkpoint) for one architecture."""
    torch.manual_seed(seed)
    model = StackedLSTM(layers, hidden)
    x_te, y_te = windows(data["test"], look_back)
    x_tr, y_tr = windows(data["train"], look_back)
    row: dict[str, Any] = {
        "layers": layers, "hidden": hidden, "look_back": look_back,
        "params": sum(p.numel() for p in model.parameters()),
    }

    # MRS on the test windows (authors: dataset.testing_data), weights N(0, 1).
    cfg = MRSConfig(samples=args.samples, dist="normal", scale=1.0, error="mae",
                    lo=0.0, hi=2.0, threshold=0.01, seed=seed)
    with PeakMemory() as mem:
        res = mrs_score_regression(model, x_te, y_te, cfg)
    row.update(mrs_mean=res.mean, mrs_sd=res.sd, mrs_log_p=res.log_p, mrs_score=res.score,
               mrs_p=res.p, mrs_seconds=res.seconds, mrs_peak_mib=mem.peak_mib)

    # Adam training (the module's initial weights are untouched by MRS).
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.MSELoss()
    checkpoints = sorted(set(args.epochs))
    train_seconds = 0.0
    with PeakMemory() as mem:
        for epoch in range(1, checkpoints[-1] + 1):
            model.train()
            t0 = time.perf_counter()
            for i in range(0, len(x_tr), args.batch_size):  # in order, like shuffle=False
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x_tr[i:i + args.batch_size]), y_tr[i:i + args.batch_size])
                loss.backward()
                opt.step()
            train_seconds += time.perf_counter() - t0
            if epoch in checkpoints:
                row[f"mae_e{epoch}"] = mae_one_step(model, x_te, y_te)
                row[f"mae_blind_e{epoch}"] = mae_blind(model, data["train"], data["test"], look_back)
                row[f"adam_seconds_e{epoch}"] = train_seconds
    row["adam_seconds"] = train_seconds
    row["adam_peak_mib"] = mem.peak_mib
    return row


# --------------------------------------------------------------------------- reporting



def correlation_rows(rows: list[dict[str, Any]], epochs: Sequence[int], layer_set: Sequence[int],
                     mae_key: str) -> list[dict[str, Any]]:
    """Rows (layers x epochs) of Pearson/Spearman correlations of trained MAE with MRS stats."""
    out = []
    for layers in list(layer_set) + ["all"]:
        sub = rows if layers == "all" else [r for r in rows if r["layers"] == layers]
        for e in epochs:
            mae = [r[f"{mae_key}{e}"] for r in sub]
            entry: dict[str, Any] = {"layers": layers, "epochs": e, "n": len(sub)}
            for s in STATS:
                col = [r[f"mrs_{s}"] for r in sub]
                entry[f"r_{s}"] = pearson(mae, col)[0]
                entry[f"rho_{s}"] = spearman(mae, col)[0]
                pub = PUBLISHED["pearson"].get((layers, e), {}) if layers != "all" else {}
                entry[f"pub_{s}"] = pub.get(s)
            out.append(entry)
    return out


def cost_rows(rows: list[dict[str, Any]], layer_set: Sequence[int], epochs: int,
              samples: int) -> list[dict[str, Any]]:
    """Seconds and peak memory per architecture, Adam vs MRS, by number of layers."""
    out = []
    pub_adam = f"{PUBLISHED['seconds']['adam_1000_epochs']:.0f} (1000 epochs)"
    pub_mrs = f"{PUBLISHED['seconds']['mrs']:.0f}"
    for method, sec_key, mem_key, pub in (
        (f"Adam, {epochs} epochs", f"adam_seconds_e{epochs}", "adam_peak_mib", pub_adam),
        (f"MRS, N={samples}", "mrs_seconds", "mrs_peak_mib", pub_mrs),
    ):
        for layers in list(layer_set) + ["all"]:
            sub = rows if layers == "all" else [r for r in rows if r["layers"] == layers]
            sec = [r[sec_key] for r in sub]
            mem = [r[mem_key] for r in sub]
            out.append({
                "method": method, "layers": layers, "n": len(sub),
                "seconds_mean": statistics.fmean(sec),
                "seconds_sd": statistics.stdev(sec) if len(sec) > 1 else math.nan,
                "peak_mib_mean": statistics.fmean(mem),
                "peak_mib_sd": statistics.stdev(mem) if len(mem) > 1 else math.nan,
                "published_seconds": pub if layers == "all" else None,
            })
    return out


def scatter_plot(rows: list[dict[str, Any]], mae_key: str, path: Path, title: str) -> None:
    """Trained MAE against each MRS statistic; colour = number of layers, marker = look-back."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    labels = {"mean": "MRS mean MAE", "sd": "MRS sd of MAE", "log_p": "MRS log P(MAE <= 0.01)"}
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    markers = ("x", "o", "s", "^", "D", "v")
    look_backs = sorted({r["look_back"] for r in rows})
    layer_set = sorted({r["layers"] for r in rows})
    # Cycle styles so that no group is silently dropped by zip().
    colors = tuple(colors[i % len(colors)] for i in range(len(layer_set)))
    markers = tuple(markers[i % len(markers)] for i in range(len(look_backs)))
    for ax, s in zip(axes, STATS):
        for layers, color in zip(layer_set, colors):
            for lb, marker in zip(look_backs, markers):
                sub = [r for r in rows if r["layers"] == layers and r["look_back"] == lb]
                ax.scatter([r[f"mrs_{s}"] for r in sub], [r[mae_key] for r in sub], s=20,
                           alpha=0.8, color=color, marker=marker)
    # Legend: colour = layers, marker = look-back.
    for layers, color in zip(layer_set, colors):
        axes[0].scatter([], [], color=color, marker="o", label=f"{layers} layer{'s' if layers > 1 else ''}")
    for lb, marker in zip(look_backs, markers):
        axes[0].scatter([], [], color="gray", marker=marker, label=f"look-back {lb}")
    for ax, s in zip(axes, STATS):
        ax.set_xlabel(labels[s])
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(6))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test MAE after Adam")
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("outputs/mrs_sine"), help="output directory")
    p.add_argument("--quick", action="store_true", help="tiny grid for tests (seconds)")
    p.add_argument("--full", action="store_true", help="also train to 1000 epochs (hours)")
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--hidden", type=int, nargs="+", default=[1, 2, 4, 8, 12, 16])
    p.add_argument("--look-backs", type=int, nargs="+", default=[1, 5, 10, 20])
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--samples", type=int, default=100, help="MRS draws N")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval", choices=["one_step", "blind"], default="one_step",
                   help="trained MAE used in the tables")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    if args.quick:
        args.layers, args.hidden, args.look_backs = [1, 2], [2], [2, 4]
        args.epochs, args.samples = [1, 2], 10
    if args.full and 1000 not in args.epochs:
        args.epochs = sorted(set(args.epochs) | {1000})
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = {"train": sine_series(0.0, 100.0), "test": sine_series(100.0, 120.0)}
    grid = [(l, h, lb) for l in args.layers for h in args.hidden for lb in args.look_backs]
    # Warm-up (not recorded): first calls pay for lazy init and allocator growth,
    # which would otherwise inflate the first architecture's time and memory.
    warm = argparse.Namespace(**{**vars(args), "epochs": [1], "samples": 2})
    evaluate_architecture(1, 2, 2, data, warm, seed=-1 & 0xFFFF)
    t_start = time.perf_counter()
    rows = []
    for i, (layers, hidden, lb) in enumerate(grid):
        row = evaluate_architecture(layers, hidden, lb, data, args, seed=args.seed * 100_003 + i)
        rows.append(row)
        last = max(args.epochs)
        print(f"[{i + 1}/{len(grid)}] L={layers} H={hidden} lb={lb}: MRS mean={row['mrs_mean']:.3f} "
              f"sd={row['mrs_sd']:.3f} logp={row['mrs_log_p']:.1f} ({row['mrs_seconds']:.2f}s) | "
              f"MAE@{last}={row[f'mae_e{last}']:.4f} ({row['adam_seconds']:.1f}s) "
              f"[{time.perf_counter() - t_start:.0f}s]", file=sys.stderr, flush=True)
    wall = time.perf_counter() - t_start

    csv_path = args.out / "mrs_sine.csv"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)

    mae_key = "mae_e" if args.eval == "one_step" else "mae_blind_e"
    epochs = sorted(set(args.epochs))
    corr = correlation_rows(rows, epochs, args.layers, mae_key)
    cost = cost_rows(rows, args.layers, epochs[-1], args.samples)
    scatter_plot(rows, f"{mae_key}{epochs[-1]}", args.out / "mrs_sine_scatter.png",
                 f"Sine: test MAE after {epochs[-1]} Adam epochs vs MRS (N={args.samples})")

    corr_cols = ["layers", "epochs", "n"] + [f"r_{s}" for s in STATS] + [f"pub_{s}" for s in STATS] \
        + [f"rho_{s}" for s in STATS]
    corr_head = {"r_mean": "r mean", "r_sd": "r sd", "r_log_p": "r log p",
                 "pub_mean": "pub. r mean", "pub_sd": "pub. r sd", "pub_log_p": "pub. r log p",
                 "rho_mean": "rho mean", "rho_sd": "rho sd", "rho_log_p": "rho log p"}
    cost_cols = ["method", "layers", "n", "seconds_mean", "seconds_sd", "peak_mib_mean",
                 "peak_mib_sd", "published_seconds"]
    lines = [
        "# MRS on the sine wave",
        "",
        f"Grid: layers {args.layers} x hidden {args.hidden} x look-back {args.look_backs} "
        f"= {len(rows)} architectures; MRS N={args.samples}, N(0,1) weights, t=0.01, range [0, 2]; "
        f"Adam lr={args.lr}, batch {args.batch_size}, MSE; trained MAE = {args.eval} on the test split.",
        f"Host: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s); wall time {wall:.0f} s.",
        "",
        "## Correlation of trained test MAE with MRS statistics",
        "",
        "Pearson r (the authors' statistic) and Spearman rho; 'pub.' = published Pearson r "
        f"({PUBLISHED['citation']}; blank = not available).",
        "",
        to_markdown(corr, corr_cols, headers=corr_head),
        "## Cost per architecture: Adam vs MRS",
        "",
        "Seconds of training / sampling and peak RSS growth (MiB, polled) per architecture; "
        f"published: Adam 1000 epochs {PUBLISHED['seconds']['adam_1000_epochs']:.0f} s vs "
        f"MRS {PUBLISHED['seconds']['mrs']:.0f} s.",
        "",
        to_markdown(cost, cost_cols, floatfmt=".3g"),
        f"CSV: `{csv_path}`; scatter plot: `{args.out / 'mrs_sine_scatter.png'}`.",
    ]
    report = "\n".join(lines) + "\n"
    (args.out / "results.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
