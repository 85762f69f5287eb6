#!/usr/bin/env python
"""What does a training-free score cost next to what it replaces? Prints one JSON object.

For a few cells of a space, on the real corpus when present (``--data``), it times

* ``mrs_screen``: MRS as the search's pre-screen scores a child (conf/screen/mrs.yaml: N draws on
  a ``bptt x batch`` validation slice, supernet sizes; the K candidates of a step scored together,
  seconds per child);
* ``mrs_study``: MRS as the study scores a cell (conf/mrs.yaml + experiment=small: N = 30 on 35 x 10);
* ``hidden_cov``: the hidden-covariance score (one forward pass of the cell);
* ``shared_eval``: the controller's reward evaluation of a child on shared weights
  (``evaluate(model, valid, bptt, search.reward_batches, genotype=g)``, the search preset's sizes);
* ``train``: training the cell from scratch for the study's budget (extrapolated from a few timed
  steps of the one loop, ``train_steps``, at the study's sizes),

all single-threaded by default (``--threads``), medians over cells and repeats, and the ratios.
Every timed cell is new to the scorer's cache, so it pays for all of its own draws and forward passes;
the genotype-independent parts (embedding/decoder shell and draws) are reused as in a real run.

    python scripts/bench_mrs.py                        # lstm space, PTB from $ENAS_RNN_DATA
    python scripts/bench_mrs.py --space enas --cells 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from enas_rnn.model import CoreKind, build_lm
from enas_rnn.scores.lm import scoring_slice
from enas_rnn.trainrun import TrainRunConfig
from enas_rnn.conf import register_configs
from enas_rnn.runs import load_splits
from enas_rnn.scores.lm import ScoreCache, mrs_score_genotype
from enas_rnn.screen import make_screener
from enas_rnn.spaces import make_space
from enas_rnn.supernet import build_supernet
from enas_rnn.train import LoopState, evaluate, train_steps

REPO = Path(__file__).resolve().parents[1]


def _compose(name: str, overrides: list[str]) -> Any:
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="lstm", choices=["lstm", "enas"])
    p.add_argument("--cells", type=int, default=6, help="cells sampled (medians are over them)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: like a loaded shared CPU)")
    p.add_argument("--train-steps", type=int, default=5, help="training steps timed to extrapolate the budget")
    p.add_argument("--data-root", default=None, help="corpus folder (default: $ENAS_RNN_DATA/ptb)")
    p.add_argument("--search-preset", default="small", help="search experiment whose supernet is timed")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    root = [f"data.root={args.data_root}"] if args.data_root else []
    scfg = _compose("search", [f"experiment={args.search_preset}", f"space={args.space}", "screen=mrs", *root])
    mcfg = _compose("mrs", ["experiment=small", f"space={args.space}", *root])
    dev = torch.device("cpu")
    splits = load_splits(scfg.data, dev)
    vocab = len(splits.corpus.vocab)
    space = make_space(args.space, scfg.space.num_nodes)
    gen = torch.Generator().manual_seed(0)
    cells = [space.sample(gen) for _ in range(args.cells)]

    # The supernet of the search preset (untrained weights cost the same to evaluate).
    m = scfg.model
    with torch.random.fork_rng():
        supernet = build_supernet(m, space, vocab).eval()
    sc = scfg.screen
    screen_slice = scoring_slice(splits.valid, sc.bptt or scfg.data.bptt, sc.batch)
    hc_slice = scoring_slice(splits.valid, scfg.data.bptt, None)  # conf/screen/hidden_cov.yaml
    mm = mcfg.model
    study_mrs = mcfg.variants["paper"]  # the published setting (conf/mrs.yaml: N = 30, N(0, 1))
    study_slice = scoring_slice(splits.valid, mcfg.score_bptt or mcfg.data.bptt, mcfg.score_batch)
    kw_study = dict(emb_size=mm.emb_size, hidden_size=mm.hidden_size, tie_weights=mm.tie_weights,
                    state_clip=mm.state_clip, init_range=mm.init_range)

    # The scorers as the search and the study use them: one cache per run, warmed on a throwaway
    # cell, so the embedding/decoder shell and the genotype-independent draws are reused, while
    # every timed cell is new (a cache miss: all N draws of its own weights and forward passes).
    screen_mrs = make_screener(scfg, vocab, splits.valid)
    hcfg = _compose("search", [f"experiment={args.search_preset}", f"space={args.space}", "screen=hidden_cov", *root])
    screen_hc = make_screener(hcfg, vocab, splits.valid)
    study_cache = ScoreCache()
    warm = space.sample(torch.Generator().manual_seed(10_000))
    screen_mrs([warm]), screen_hc([warm])
    mrs_score_genotype(warm, study_slice, vocab, study_mrs, cache=study_cache, **kw_study)

    per: dict[str, list[float]] = {k: [] for k in ("mrs_screen", "mrs_study", "hidden_cov", "shared_eval", "train")}
    for g in cells:
        # One controller step: K fresh candidates scored together (the screener batches their
        # decoder GEMMs), per child.
        step = [g] + [space.sample(gen) for _ in range(scfg.screen.candidates - 1)]
        per["mrs_screen"].append(_median_seconds(lambda: screen_mrs(step), 1) / len(step))
        per["mrs_study"].append(_median_seconds(
            lambda: mrs_score_genotype(g, study_slice, vocab, study_mrs, cache=study_cache, **kw_study), 1))
        per["hidden_cov"].append(_median_seconds(lambda: screen_hc([g]), 1))
        per["shared_eval"].append(_median_seconds(
            lambda: evaluate(supernet, splits.valid, scfg.data.bptt, scfg.search.reward_batches, 0, genotype=g),
            args.repeats))
        # Training: time a few steps of the one loop at the study's sizes and extrapolate.
        run = OmegaConf.merge(OmegaConf.structured(TrainRunConfig),
                              {"data": mcfg.data, "model": mcfg.model, "train": mcfg.train})
        run.model.core = CoreKind.cell
        with torch.random.fork_rng():
            model = build_lm(run.model, vocab, g)
        opt = torch.optim.SGD(model.parameters(), lr=run.train.lr)
        state = LoopState(lr=run.train.lr)
        train_steps(model, opt, splits.train, state, run.train, run.data, 1)  # warm-up
        t0 = time.perf_counter()
        train_steps(model, opt, splits.train, state, run.train, run.data, args.train_steps)
        step_s = (time.perf_counter() - t0) / args.train_steps
        per["train"].append(step_s * int(run.train.max_steps))

    med = {k: statistics.median(v) for k, v in per.items()}
    report = {
        "space": args.space,
        "cells": args.cells,
        "threads": args.threads,
        "vocab": vocab,
        "seconds": med,
        "settings": {
            "mrs_screen": f"N={sc.mrs.samples}, {screen_slice.shape[0] - 1}x{screen_slice.shape[1]} tokens, "
                          f"H={m.hidden_size}, tied={m.tie_weights}",
            "mrs_study": f"N={study_mrs.samples}, {study_slice.shape[0] - 1}x{study_slice.shape[1]} tokens, H={mm.hidden_size}",
            "hidden_cov": f"{hc_slice.shape[0] - 1}x{hc_slice.shape[1]} tokens, H={m.hidden_size}",
            "shared_eval": f"reward_batches={scfg.search.reward_batches} x {scfg.data.bptt}x{scfg.data.eval_batch_size} "
                           f"tokens, H={m.hidden_size} (search experiment={args.search_preset})",
            "train": f"{mcfg.train.max_steps} steps x {mcfg.data.batch_size}x{mcfg.data.bptt} tokens, H={mm.hidden_size} "
                     f"(extrapolated from {args.train_steps} steps)",
        },
        "ratios": {
            "mrs_screen / shared_eval": med["mrs_screen"] / med["shared_eval"],
            "hidden_cov / shared_eval": med["hidden_cov"] / med["shared_eval"],
            "train / mrs_study": med["train"] / med["mrs_study"],
            "train / hidden_cov": med["train"] / med["hidden_cov"],
            "screen step (K candidates scored, keep evaluated) / plain K evaluations": (
                scfg.screen.candidates * med["mrs_screen"] + scfg.screen.keep * med["shared_eval"]
            ) / (scfg.screen.candidates * med["shared_eval"]),
        },
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
