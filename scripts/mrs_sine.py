#!/usr/bin/env python
"""MRS on the sine wave, set up as its authors ran it: does MRS predict the MAE reached by training?

Source of the setup: the authors' code, github.com/acamero/dlopt (read at commit 4f7cac9):
``data/sin/config.json``, ``SinDataReader`` and ``RNNBuilder``/``BPTrainRNN`` in
``publications/low-cost/regr/`` and ``publications/caepia2018/`` (the 2018 code of arXiv:1805.07159
and of the CAEPIA'18 multi-layer paper, Keras 2.1.2), ``dlopt/sampling.py`` (``MAERandomSampling``,
``FullSpaceListing``), ``dlopt/nn.py`` (``TrainGradientBased``), ``examples/sin/*.json``,
``publications/low-cost/mae/`` (``mrs-energy.json``, ``analysis.Rmd``) and
``publications/low-cost/opt/random-search.py``.

What we follow:

* series: sin(2 pi t), t = 0, 0.1, ... ; training t in [0, 100) (1000 points), test t in [100, 120)
  (200 points) (``data/sin/config.json``). 10 samples per period, so the series is exactly
  10-periodic: every test window also occurs in the training windows.
* scaling: the series is min-max scaled to [0, 1] (sklearn's MinMaxScaler, which the authors fit on
  the whole data frame before splitting in their loaders for real data); inputs and targets alike.
* network: 1-3 stacked LSTM layers, each of 1-10 units (widths chosen per layer, as the authors'
  ``FullSpaceListing`` lists them), the last layer's final state into a dense unit with a sigmoid
  (``dense_activation: "sigmoid"`` as in ``examples/sin/mae-rand-samp-sin.json`` and every
  MinMax-scaled configuration). The LSTM is Keras's (2.1.2): gate order i, f, c, o, ONE bias vector
  per layer and ``hard_sigmoid`` gates (clip(0.2 x + 0.5, 0, 1); Keras switched to ``sigmoid`` only
  in 2.3.0) - ``--gate sigmoid`` for the later default.
* input: the last ``look_back`` values, look-back 2-20; target: the next value.
* MRS: every weight (kernel, recurrent kernel, bias, dense) drawn from N(0, 1); MAE of one-step
  predictions on the test windows; normal truncated to [0, 1] (the MAE range with sigmoid outputs
  and [0, 1] targets, as in ``mrs-energy.json``); N = 100; threshold t = 0.01; mean and population
  sd (``np.std``) of the N errors; log p = log P(MAE <= t), which the authors floor at log(1e-300)
  when the cdf underflows to 0 (``MAERandomSampling``, since 2019; -inf before). Uses
  ``enas_rnn.scores.mrs.mrs_score_regression``.
* training: Adam on MSE, mini-batches in order (``shuffle=False`` in ``BPTrainRNN``), Keras's default
  initialisation (glorot-uniform kernels, orthogonal recurrent kernels, zero biases with forget-gate
  bias 1); trained MAE = one-step-ahead MAE on the test windows (what MRS also scores).
* correlation: Pearson's r of trained test MAE with MRS mean / sd / log p per number of hidden
  layers and over all (``cor()`` in ``analysis.Rmd``); Spearman's rho and Kendall's tau added.

Deviations (all also listed in docs/mrs_sine_results.md):

1. architectures: a seeded random choice of ``--per-layer`` (default 32) distinct (widths, look-back)
   pairs for each number of layers (96 in all) from the authors' space of 1110 width combinations x 19
   look-backs, not the whole space (``analysis.Rmd`` compares 9,900 trained sine configurations).
2. training budget, for one CPU core: batch 32 (the authors' sine loader: 5) and Adam lr 3.2e-4
   (theirs: 5e-5; scaled linearly with the batch, 5e-5 x 32 / 5, so that an epoch moves the weights
   about as far as one of theirs); no dropout, no validation split, no early stopping (theirs:
   patience 50 on validation loss) and no best-checkpoint restore; one run per architecture
   evaluated after 1, 10 and 100 epochs (identical to separate runs: training draws nothing at
   random after the initialisation and batches come in order).
3. the sine loaders of the authors do not scale the series (their sigmoid example then truncates
   MAE to [0, 2]); we scale it to [0, 1] so that a sigmoid output can reach every target, as their
   real-data pipelines do. MAEs here are in scaled units (1 scaled = 1.902 raw).
4. PyTorch, float32, torch's RNG instead of numpy's; log p is computed in log space (exact where
   scipy's cdf underflows) and floored at log(1e-300) like the authors' 2019 code.
5. the CAEPIA'18 trainer's ``blind`` flag: its caller passes ``verbose=0`` into that slot, so it
   predicted one step ahead; the 2018 regression trainer defaults to free-running ("blind")
   prediction. Both MAEs are in the CSV (``mae_e*`` and ``mae_blind_e*``); ``--eval blind`` makes
   the tables use the free-running one.

Ablation: ``--lookback1`` also runs every chosen architecture with look-back 1 (outside the authors'
range: one value cannot tell a rising sine from a falling one) and adds a table with those networks
pooled in. Rows are seeded per architecture, so the main table is the same with or without it.

Usage: ``python scripts/mrs_sine.py`` (96 architectures, 1/10/100 epochs: about 20 min on one
core), ``--lookback1`` (+ ablation, a few minutes more), ``--full`` (adds 1000 epochs: hours),
``--quick`` (seconds, for tests).
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from enas_rnn.scores.mrs import MRSConfig, mrs_score_regression
from enas_rnn.stats import kendall, pearson, spearman, to_markdown

# Values quoted for this experiment in the project's issue (Pearson r of trained MAE with the MRS
# statistic, 100 epochs), attributed there to Camero, Toutouh & Alba's CAEPIA 2018 paper
# ("Comparing deep recurrent networks based on the MAE random sampling, a first approach"; extended
# as arXiv:1909.02425). NOT verified: neither paper's tables could be retrieved here (only
# abstracts), so the report prints them as "quoted" and every other cell blank.
PUBLISHED: dict[str, Any] = {
    "citation": "Camero, Toutouh & Alba, CAEPIA 2018 (as quoted in the issue; not verified here)",
    # (hidden layers, epochs) -> Pearson r of trained MAE with MRS statistic
    "pearson": {
        (1, 100): {"mean": -0.790, "sd": -0.641, "log_p": -0.650},
        (3, 100): {"mean": -0.720, "sd": -0.869, "log_p": -0.906},
    },
}

STATS = ("mean", "sd", "log_p")
METHODS = {"r": pearson, "rho": spearman, "tau": kendall}
MAX_UNITS = 10  # per layer (authors: 1-10)
LOOK_BACKS = (2, 20)  # inclusive (authors: 2-20)


# --------------------------------------------------------------------------- data


def sine_series(start: float, stop: float, step: float = 0.1) -> np.ndarray:
    """sin(2 pi t) on t = start, start + step, ... < stop (float64; integer steps, no drift)."""
    n = int(round((stop - start) / step))
    return np.sin(2 * np.pi * (start + step * np.arange(n)))


def load_data() -> dict[str, Tensor]:
    """Training and test series, min-max scaled to [0, 1] together (float32 tensors)."""
    train, test = sine_series(0.0, 100.0), sine_series(100.0, 120.0)
    both = np.concatenate([train, test])
    lo, hi = both.min(), both.max()  # +-0.951: t = 0.25 + k/2 is never sampled
    return {name: torch.from_numpy((s - lo) / (hi - lo)).float() for name, s in (("train", train), ("test", test))}


def windows(series: Tensor, look_back: int) -> tuple[Tensor, Tensor]:
    """Inputs (B, look_back, 1) and next-value targets (B, 1)."""
    x = series.unfold(0, look_back, 1)[:-1]  # shape: (len - look_back, look_back)
    y = series[look_back:]
    return x.unsqueeze(-1), y.unsqueeze(-1)  # shape: (B, T, 1), (B, 1)


# --------------------------------------------------------------------------- model (Keras LSTM)


def hard_sigmoid(z: Tensor) -> Tensor:
    """Keras 2's hard sigmoid: clip(0.2 z + 0.5, 0, 1) (torch's hardsigmoid has slope 1/6)."""
    return (z * 0.2 + 0.5).clamp(0.0, 1.0)


class KerasLSTM(nn.Module):
    """One Keras LSTM layer: gates = x K + h U + b, order (i, f, c, o), one bias, zero initial state."""

    def __init__(self, input_size: int, units: int, gate: str = "hard_sigmoid") -> None:
        super().__init__()
        self.units = units
        self.gate = hard_sigmoid if gate == "hard_sigmoid" else torch.sigmoid
        self.kernel = nn.Parameter(torch.empty(input_size, 4 * units))
        self.recurrent_kernel = nn.Parameter(torch.empty(units, 4 * units))
        self.bias = nn.Parameter(torch.empty(4 * units))

    def keras_init_(self, generator: torch.Generator) -> None:
        """Keras defaults: glorot-uniform kernel, orthogonal recurrent kernel, zero bias with
        ``unit_forget_bias`` (forget-gate bias 1)."""
        with torch.no_grad():
            nn.init.xavier_uniform_(self.kernel, generator=generator)  # fans: (in, 4H), as Keras
            nn.init.orthogonal_(self.recurrent_kernel, generator=generator)
            self.bias.zero_()
            self.bias[self.units:2 * self.units] = 1.0

    def forward(self, x: Tensor, sequences: bool) -> Tensor:
        b, t, _ = x.shape
        h_units = self.units
        # Input projection of every step at once: shape (B*T, in) @ (in, 4H) -> (B, T, 4H).
        xk = torch.addmm(self.bias, x.reshape(b * t, -1), self.kernel).view(b, t, 4 * h_units)
        h = x.new_zeros(b, h_units)
        c = x.new_zeros(b, h_units)
        outs = []
        for step in range(t):
            z = torch.addmm(xk[:, step], h, self.recurrent_kernel)  # shape: (B, 4H)
            a = self.gate(z)  # i, f and o read from here; c's slot uses tanh below
            c = a[:, h_units:2 * h_units] * c + a[:, :h_units] * torch.tanh(z[:, 2 * h_units:3 * h_units])
            h = a[:, 3 * h_units:] * torch.tanh(c)
            if sequences:
                outs.append(h)
        return torch.stack(outs, 1) if sequences else h  # shape: (B, T, H) or (B, H)


class SineNet(nn.Module):
    """Stacked Keras LSTMs of the given widths + a dense sigmoid unit (the authors' RNNBuilder)."""

    def __init__(self, widths: Sequence[int], gate: str = "hard_sigmoid") -> None:
        super().__init__()
        ins = [1] + list(widths[:-1])
        self.lstms = nn.ModuleList(KerasLSTM(i, w, gate) for i, w in zip(ins, widths))
        self.out = nn.Linear(widths[-1], 1)

    def keras_init_(self, generator: torch.Generator) -> None:
        for layer in self.lstms:
            layer.keras_init_(generator)
        with torch.no_grad():
            nn.init.xavier_uniform_(self.out.weight, generator=generator)
            self.out.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.lstms) - 1
        for i, layer in enumerate(self.lstms):
            x = layer(x, sequences=i < last)  # return_sequences on all but the last layer
        return torch.sigmoid(self.out(x))  # shape: (B, 1)


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


# --------------------------------------------------------------------------- grid


def arch_seed(seed: int, widths: Sequence[int], look_back: int) -> int:
    """Seed of one architecture, a function of (run seed, widths, look-back) only."""
    state = np.random.SeedSequence([int(seed), len(widths), *widths, look_back]).generate_state(1)
    return int(state[0])


def choose_grid(per_layer: int, layers: Sequence[int], seed: int) -> list[tuple[tuple[int, ...], int]]:
    """``per_layer`` distinct (widths, look-back) pairs per number of layers, seeded.

    Widths: each layer 1..10 units; look-back 2..20 - the authors' space.
    """
    rng = np.random.default_rng(seed)
    grid: list[tuple[tuple[int, ...], int]] = []
    for n_layers in layers:
        size = MAX_UNITS ** n_layers * (LOOK_BACKS[1] - LOOK_BACKS[0] + 1)
        if per_layer > size:
            raise ValueError(f"--per-layer {per_layer} exceeds the {size} architectures with {n_layers} layer(s)")
        seen: set[tuple[tuple[int, ...], int]] = set()
        while len(seen) < per_layer:
            widths = tuple(int(w) for w in rng.integers(1, MAX_UNITS + 1, size=n_layers))
            lb = int(rng.integers(LOOK_BACKS[0], LOOK_BACKS[1] + 1))
            if (widths, lb) not in seen:
                seen.add((widths, lb))
                grid.append((widths, lb))
    return grid


# --------------------------------------------------------------------------- one architecture


def evaluate_architecture(widths: Sequence[int], look_back: int, data: dict[str, Tensor],
                          args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """MRS statistics and Adam-trained MAEs (at each checkpoint) of one architecture."""
    seed = arch_seed(args.seed, widths, look_back)
    model = SineNet(widths, args.gate)
    model.keras_init_(torch.Generator().manual_seed(seed))
    x_te, y_te = windows(data["test"], look_back)
    x_tr, y_tr = windows(data["train"], look_back)
    row: dict[str, Any] = {
        "variant": variant, "layers": len(widths), "widths": "-".join(map(str, widths)),
        "units": sum(widths), "look_back": look_back, "params": sum(p.numel() for p in model.parameters()),
    }

    # MRS on the test windows (the authors' dataset.testing_data); weights N(0, 1).
    cfg = MRSConfig(samples=args.samples, dist="normal", scale=1.0, error="mae", lo=0.0, hi=1.0,
                    threshold=0.01, floor=1e-300, seed=seed)
    res = mrs_score_regression(model, x_te, y_te, cfg)
    # log_p: as the authors record it (floored at log 1e-300); log_p_exact: unfloored.
    row.update(mrs_mean=res.mean, mrs_sd=res.sd, mrs_log_p=res.score, mrs_log_p_exact=res.log_p,
               mrs_p=res.p, mrs_seconds=res.seconds)

    # Adam on MSE from the Keras initialisation (MRS restored the module's weights).
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    checkpoints = sorted(set(args.epochs))
    train_seconds = 0.0
    for epoch in range(1, checkpoints[-1] + 1):
        model.train()
        t0 = time.perf_counter()
        for i in range(0, len(x_tr), args.batch_size):  # in order, like shuffle=False
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(model(x_tr[i:i + args.batch_size]), y_tr[i:i + args.batch_size])
            loss.backward()
            opt.step()
        train_seconds += time.perf_counter() - t0
        if epoch in checkpoints:
            row[f"mae_e{epoch}"] = mae_one_step(model, x_te, y_te)
            row[f"mae_blind_e{epoch}"] = mae_blind(model, data["train"], data["test"], look_back)
            row[f"adam_seconds_e{epoch}"] = train_seconds
    return row


# --------------------------------------------------------------------------- reporting


def correlation_rows(rows: list[dict[str, Any]], epochs: Sequence[int], layer_set: Sequence[int],
                     mae_key: str, with_published: bool) -> list[dict[str, Any]]:
    """One row per (layers, epochs): r / rho / tau of trained MAE with each MRS statistic."""
    out = []
    for layers in list(layer_set) + ["all"]:
        sub = rows if layers == "all" else [r for r in rows if r["layers"] == layers]
        for e in epochs:
            mae = [r[f"{mae_key}{e}"] for r in sub]
            entry: dict[str, Any] = {"layers": layers, "epochs": e, "n": len(sub)}
            pub = PUBLISHED["pearson"].get((layers, e), {}) if with_published else {}
            for s in STATS:
                col = [r[f"mrs_{s}"] for r in sub]
                for name, fn in METHODS.items():
                    entry[f"{name}_{s}"] = fn(mae, col)[0]
                entry[f"pub_{s}"] = pub.get(s)
            out.append(entry)
    return out


def mae_summary(rows: list[dict[str, Any]], epochs: Sequence[int], layer_set: Sequence[int],
                mae_key: str) -> list[dict[str, Any]]:
    """Median / min / max trained MAE per (layers, epochs): how far training got."""
    out = []
    for layers in list(layer_set) + ["all"]:
        sub = rows if layers == "all" else [r for r in rows if r["layers"] == layers]
        for e in epochs:
            v = [r[f"{mae_key}{e}"] for r in sub]
            out.append({"layers": layers, "epochs": e, "n": len(v), "median": statistics.median(v),
                        "min": min(v), "max": max(v)})
    return out


def cost_rows(rows: list[dict[str, Any]], layer_set: Sequence[int], epochs: int, samples: int) -> list[dict[str, Any]]:
    """Seconds per architecture, Adam vs MRS, by number of layers."""
    out = []
    for method, key in ((f"Adam, {epochs} epochs", f"adam_seconds_e{epochs}"), (f"MRS, N={samples}", "mrs_seconds")):
        for layers in list(layer_set) + ["all"]:
            sec = [r[key] for r in rows if layers == "all" or r["layers"] == layers]
            out.append({"method": method, "layers": layers, "n": len(sec), "seconds_mean": statistics.fmean(sec),
                        "seconds_sd": statistics.stdev(sec) if len(sec) > 1 else math.nan})
    return out


def scatter_plot(rows: list[dict[str, Any]], mae_key: str, path: Path, title: str) -> None:
    """Trained MAE against each MRS statistic; colour = number of layers, cross = look-back 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    labels = {"mean": "MRS mean MAE", "sd": "MRS sd of MAE", "log_p": "MRS log P(MAE <= 0.01)"}
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    layer_set = sorted({r["layers"] for r in rows})
    for ax, s in zip(axes, STATS):
        for k, layers in enumerate(layer_set):
            for lb1, marker in ((False, "o"), (True, "x")):
                sub = [r for r in rows if r["layers"] == layers and (r["look_back"] == 1) == lb1]
                if sub:
                    label = f"{layers} layer{'s' if layers > 1 else ''}" + (", look-back 1" if lb1 else "")
                    ax.scatter([r[f"mrs_{s}"] for r in sub], [r[mae_key] for r in sub], s=18, alpha=0.8,
                               color=colors[k % len(colors)], marker=marker, label=label)
        ax.set_xlabel(labels[s])
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test MAE after Adam (scaled units)")
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


CORR_HEAD = {f"{m}_{s}": f"{m} {s.replace('_', ' ')}" for m in METHODS for s in STATS}
CORR_HEAD.update({f"pub_{s}": f"quoted r {s.replace('_', ' ')}" for s in STATS})


def corr_tables(corr: list[dict[str, Any]], with_published: bool) -> list[str]:
    """Markdown: Pearson (beside the quoted values), then Spearman and Kendall."""
    base = ["layers", "epochs", "n"]
    pear = base + [f"r_{s}" for s in STATS] + ([f"pub_{s}" for s in STATS] if with_published else [])
    rank = base + [f"rho_{s}" for s in STATS] + [f"tau_{s}" for s in STATS]
    return [to_markdown(corr, pear, headers=CORR_HEAD), to_markdown(corr, rank, headers=CORR_HEAD)]


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("outputs/mrs_sine"), help="output directory")
    p.add_argument("--quick", action="store_true", help="tiny grid for tests (seconds)")
    p.add_argument("--full", action="store_true", help="also train to 1000 epochs (hours)")
    p.add_argument("--lookback1", action="store_true", help="ablation: also run every architecture at look-back 1")
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--per-layer", type=int, default=32, help="architectures drawn per number of layers")
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--samples", type=int, default=100, help="MRS draws N")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=None, help="Adam lr (default: 5e-5 x batch / 5)")
    p.add_argument("--gate", choices=["hard_sigmoid", "sigmoid"], default="hard_sigmoid",
                   help="LSTM gate activation (Keras 2.1.2: hard_sigmoid; Keras >= 2.3: sigmoid)")
    p.add_argument("--eval", choices=["one_step", "blind"], default="one_step", help="trained MAE used in the tables")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    if args.quick:
        args.per_layer, args.epochs, args.samples = 4, [1, 3], 10
    if args.full and 1000 not in args.epochs:
        args.epochs = sorted(set(args.epochs) | {1000})
    if args.lr is None:
        args.lr = 5e-5 * args.batch_size / 5  # the authors' 5e-5 at batch 5, scaled linearly
    if min(args.layers) < 1 or args.per_layer < 3:
        p.error("--layers must be >= 1 and --per-layer >= 3 (a correlation needs 3 points)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    data = load_data()
    grid = [(w, lb, "authors") for w, lb in choose_grid(args.per_layer, args.layers, args.seed)]
    if args.lookback1:
        grid += sorted({(w, 1, "lookback1") for w, _, _ in grid}, key=lambda g: (len(g[0]), g[0]))
    t_start = time.perf_counter()
    rows = []
    last = max(args.epochs)
    for i, (widths, lb, variant) in enumerate(grid):
        row = evaluate_architecture(widths, lb, data, args, variant)
        rows.append(row)
        print(f"[{i + 1}/{len(grid)}] widths={row['widths']} lb={lb}: MRS mean={row['mrs_mean']:.3f} "
              f"sd={row['mrs_sd']:.3f} logp={row['mrs_log_p']:.1f} ({row['mrs_seconds']:.2f}s) | "
              f"MAE@{last}={row[f'mae_e{last}']:.4f} ({row[f'adam_seconds_e{last}']:.1f}s) "
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
    main_rows = [r for r in rows if r["variant"] == "authors"]
    corr = correlation_rows(main_rows, epochs, args.layers, mae_key, with_published=True)
    pear, rank = corr_tables(corr, with_published=True)
    scatter_plot(rows, f"{mae_key}{last}", args.out / "mrs_sine_scatter.png",
                 f"Sine: test MAE after {last} Adam epochs vs MRS (N={args.samples})")
    n_archs = len(main_rows)
    lines = [
        "# MRS on the sine wave (the authors' setup)",
        "",
        f"{n_archs} architectures: {args.per_layer} per number of layers {args.layers}, widths 1-{MAX_UNITS} "
        f"per layer, look-back {LOOK_BACKS[0]}-{LOOK_BACKS[1]} (seed {args.seed}); Keras LSTM with "
        f"{args.gate} gates, dense sigmoid output, series min-max scaled to [0, 1]. MRS: N={args.samples}, "
        "N(0, 1) weights, MAE truncated to [0, 1], t = 0.01. Adam lr "
        f"{args.lr:g}, batch {args.batch_size}, MSE, in-order batches; trained MAE = {args.eval} on the test "
        "windows (scaled units).",
        f"Host: {platform.machine()}, torch {torch.__version__}, {args.threads} thread(s); "
        f"wall time {wall:.0f} s for {len(rows)} networks.",
        "",
        "## Pearson r of trained test MAE with MRS statistics",
        "",
        f"'quoted' = value quoted in the project's issue ({PUBLISHED['citation']}); blank = none.",
        "",
        pear,
        "## Spearman rho and Kendall tau",
        "",
        rank,
        "## Trained test MAE reached (median, min, max)",
        "",
        to_markdown(mae_summary(main_rows, epochs, args.layers, mae_key),
                    ["layers", "epochs", "n", "median", "min", "max"], floatfmt=".3g"),
    ]
    if args.lookback1:
        abl = correlation_rows(rows, epochs, args.layers, mae_key, with_published=False)
        apear, arank = corr_tables(abl, with_published=False)
        lb1 = [r for r in rows if r["variant"] == "lookback1"]
        lines += [
            "## Ablation: the same architectures plus their look-back-1 copies",
            "",
            f"{len(rows)} networks ({len(lb1)} with look-back 1, outside the authors' range).",
            "",
            apear,
            arank,
            "Trained test MAE of the look-back-1 networks alone:",
            "",
            to_markdown(mae_summary(lb1, epochs, args.layers, mae_key),
                        ["layers", "epochs", "n", "median", "min", "max"], floatfmt=".3g"),
        ]
    lines += [
        "## Cost per architecture: Adam vs MRS (seconds)",
        "",
        to_markdown(cost_rows(main_rows, args.layers, last, args.samples),
                    ["method", "layers", "n", "seconds_mean", "seconds_sd"], floatfmt=".3g"),
        f"CSV: `{csv_path}`; scatter plot: `{args.out / 'mrs_sine_scatter.png'}`.",
    ]
    report = "\n".join(lines) + "\n"
    (args.out / "results.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
