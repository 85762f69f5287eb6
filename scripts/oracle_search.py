#!/usr/bin/env python
"""Can the controller find the LSTM at all? An oracle search that costs no training.

    taskset -c 1 env OMP_NUM_THREADS=1 python3 scripts/oracle_search.py            # the full study
    python3 scripts/oracle_search.py --steps 200 --seeds 1 --out /tmp/o.json --png /tmp/o.png   # a quick look

Everything is as in ``enas-search`` (``SearchRun``) except the reward: the real ``Controller`` with the
default ``ControllerConfig``, ``ENASStrategy`` (REINFORCE, EMA baseline, entropy bonus) with the entropy
weight, baseline decay and learning rate of ``conf/search/enas.yaml``, one child per step, the degenerate
mask (``search.degenerate=mask``: the output decisions masked by ``SearchSpace.allowed``, node prefixes
without a valid output redrawn). The reward of a cell is

    reward = 1 / (1 + d),   d = graph edit distance to the target (``enas_rnn.distance``)

positive and of the form c / ppl like the ENAS reward (the target gets 1, one edit away 0.5, a typical
random cell at d ~ 13 about 0.07: the range 80 / ppl spans for ppl 80..1100), so the policy gradient
has the scale it has in a real search; -d would multiply it by ~100. Targets: the LSTM and a random
valid cell of the same space (seeded); spaces: the 8-node lstm space, ``template=memory`` and ``template=gates``. Against
random sampling: uniform valid cells (what random search draws), the same number of draws.

Reported per (space, target, method): the step at which the target was first sampled (same canonical
cell) or none within the cap, the distance per window of 100 steps (min and mean), the final mean
distance (last window), and how many distances were exact (branch and bound finished within
``--max-expansions``; otherwise an upper bound). Writes one strict JSON with every number and one PNG,
and prints a markdown table. This separates "the controller cannot reach the cell" from "the
supernet's reward does not point to it".
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's enas_rnn, not an installed one

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from enas_rnn.controller import Controller, ControllerConfig  # noqa: E402
from enas_rnn.distance import graph_edit_distance  # noqa: E402
from enas_rnn.genotype import Genotype, get_named  # noqa: E402
from enas_rnn.spaces import SearchSpace, make_space  # noqa: E402
from enas_rnn.strategies import ENASStrategy, ReinforceConfig  # noqa: E402

SPACES = (("lstm", 8, "none"), ("lstm", 8, "memory"), ("lstm", 8, "gates"))
TARGET_SEED = 1234  # the random target of each space


def reward_of(d: int) -> float:
    """The oracle's reward: 1 / (1 + graph edit distance)."""
    return 1.0 / (1.0 + d)


class Distances:
    """Graph edit distance to one target, cached by the cell's canonical hash (a converged policy repeats)."""

    def __init__(self, target: Genotype, max_expansions: int) -> None:
        self.target, self.max_expansions = target, max_expansions
        self.cache: dict[str, tuple[int, bool]] = {}
        self.calls = 0

    def __call__(self, g: Genotype) -> tuple[int, bool]:
        key = g.hash()
        got = self.cache.get(key)
        if got is None:
            self.calls += 1
            d = graph_edit_distance(g, self.target, self.max_expansions)
            got = self.cache[key] = (d.value, d.exact)
        return got


def run_controller(space: SearchSpace, dist: Distances, steps: int, seed: int, rcfg: ReinforceConfig
                   ) -> tuple[list[int], list[bool], int]:
    """REINFORCE with the oracle reward; returns the distance and exactness per step and the redraws."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    valid: Callable[[Genotype], bool] = lambda g: not g.is_degenerate()  # noqa: E731
    constraint = functools.partial(space.allowed, require_memory=True)  # search.degenerate=mask
    strategy = ENASStrategy(Controller(space, ControllerConfig()), rcfg, gen, constraint)
    ds, ex, redraws = [], [], 0
    for _ in range(steps):
        genotypes, handle, rejected = strategy.propose(1, valid)  # mask mode redraws invalid prefixes, as SearchRun
        d, exact = dist(genotypes[0])
        strategy.update(handle, [0], [reward_of(d)])
        ds.append(d)
        ex.append(exact)
        redraws += rejected
    return ds, ex, redraws


def run_random(space: SearchSpace, dist: Distances, steps: int, seed: int) -> tuple[list[int], list[bool], int]:
    """Uniform valid cells (random search's draws)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    ds, ex = [], []
    for _ in range(steps):
        d, exact = dist(space.sample(gen, accept=lambda g: not g.is_degenerate()))
        ds.append(d)
        ex.append(exact)
    return ds, ex, 0


def summarise(ds: list[int], ex: list[bool], redraws: int, window: int) -> dict[str, Any]:
    wins = [ds[k:k + window] for k in range(0, len(ds), window)]
    first = next((t + 1 for t, d in enumerate(ds) if d == 0), None)
    return {
        "first_hit_step": first,  # 1-based step of the first draw of the target; None: not within the cap
        "hits": sum(d == 0 for d in ds),
        "min_distance": min(ds),
        "final_mean_distance": round(statistics.mean(wins[-1]), 3),
        "window_min": [min(w) for w in wins],
        "window_mean": [round(statistics.mean(w), 3) for w in wins],
        "inexact": sum(not e for e in ex),
        "redraws": redraws,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--max-expansions", type=int, default=20_000, help="graph edit distance search cap per call")
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "oracle" / "oracle.json"))
    ap.add_argument("--png", default=str(REPO / "docs" / "oracle_distance.png"))
    ap.add_argument("--templates", default=",".join(t for _, _, t in SPACES),
                    help="the lstm-space templates to run (comma-separated); with --keep-others the --out file's "
                         "results for the other templates are kept, each with the commit it was measured at")
    ap.add_argument("--keep-others", action="store_true")
    ap.add_argument("--table", action="store_true", help="only print the table of the --out file")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(Path(args.out).read_text())["results"], json.loads(Path(args.out).read_text())["steps"]))
        return
    chosen = [t.strip() for t in args.templates.split(",") if t.strip()]
    unknown = sorted(set(chosen) - {t for _, _, t in SPACES})
    if unknown:
        raise SystemExit(f"unknown template(s) {', '.join(unknown)}: valid are {', '.join(t for _, _, t in SPACES)}")
    commit = _commit()
    torch.set_num_threads(1)
    search = OmegaConf.load(REPO / "conf" / "search" / "enas.yaml")
    rcfg = ReinforceConfig(float(search.entropy_weight), float(search.baseline_decay), float(search.controller_lr),
                           search.controller_clip)
    results: list[dict[str, Any]] = []
    t_start = time.process_time()
    kept: list[dict[str, Any]] = []
    if args.keep_others and Path(args.out).is_file():
        old = json.loads(Path(args.out).read_text())
        if (old["steps"], old["seeds"], old["window"], old["max_expansions"]) != (
                args.steps, args.seeds, args.window, args.max_expansions):
            raise SystemExit(f"{args.out} was made with other --steps/--seeds/--window/--max-expansions: "
                             "rerun every template, or pass the same values")
        kept = [r for r in old["results"] if r["template"] not in chosen]
    for name, nodes, template in SPACES:
        if template not in chosen:
            continue
        space = make_space(name, nodes, template)
        targets = {"lstm": get_named("lstm"),
                   "random": space.sample(torch.Generator().manual_seed(TARGET_SEED), accept=lambda g: not g.is_degenerate())}
        for tname, target in targets.items():
            space.encode(target)  # the target is a point of the space (raises otherwise)
            for method in ("controller", "random"):
                dist = Distances(target, args.max_expansions)
                t0 = time.process_time()
                runs = []
                for seed in range(args.seeds):
                    if method == "controller":
                        ds, ex, redraws = run_controller(space, dist, args.steps, seed, rcfg)
                    else:
                        ds, ex, redraws = run_random(space, dist, args.steps, seed)
                    runs.append({"seed": seed, **summarise(ds, ex, redraws, args.window)})
                cpu = time.process_time() - t0
                results.append({
                    "space": name, "nodes": nodes, "template": template, "target": tname,
                    "target_genotype": target.to_dict(), "target_distance_to_lstm":
                        graph_edit_distance(target, get_named("lstm"), args.max_expansions).value,
                    "method": method, "runs": runs, "distance_calls": dist.calls, "cpu_s": round(cpu, 1),
                    "commit": commit,
                    "mean_window_mean": [round(statistics.mean(r["window_mean"][k] for r in runs), 3)
                                         for k in range(len(runs[0]["window_mean"]))],
                    "mean_window_min": [round(statistics.mean(r["window_min"][k] for r in runs), 3)
                                        for k in range(len(runs[0]["window_min"]))],
                })
                print(f"{name} {nodes} {template} target {tname} {method}: {cpu:.0f} s CPU, "
                      f"{dist.calls} distances computed", file=sys.stderr, flush=True)
    doc = {
        "what": "oracle search: reward 1/(1+d), d = graph edit distance to the target; controller (REINFORCE, "
                "defaults of conf/search/enas.yaml, degenerate mask) vs uniform valid cells",
        "command": "taskset -c 1 env OMP_NUM_THREADS=1 python3 scripts/oracle_search.py " + " ".join(sys.argv[1:]),
        "steps": args.steps, "seeds": args.seeds, "window": args.window, "max_expansions": args.max_expansions,
        "reinforce": {"entropy_weight": rcfg.entropy_weight, "baseline_decay": rcfg.baseline_decay,
                      "controller_lr": rcfg.controller_lr},
        "controller": vars(ControllerConfig()),
        "cpu_s": round(time.process_time() - t_start, 1),
        "results": sorted(kept + results, key=lambda r: ([t for _, _, t in SPACES].index(r["template"]),
                                                         r["target"] != "lstm", r["method"] != "controller")),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, allow_nan=False, indent=1) + "\n")
    plot(doc["results"], args, Path(args.png))
    print(table(doc["results"], args.steps))


def _commit() -> str | None:
    """The checkout's commit (short), so a file that mixes runs says what each was measured with."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return None
    return out.stdout.strip() or None


def table(results: list[dict[str, Any]], steps: int) -> str:
    """The markdown table of the study."""
    lines = ["| space | target (d to LSTM) | method | first hit per seed | hits | min d | final mean d | inexact | commit |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        runs = r["runs"]
        first = ", ".join(str(x["first_hit_step"]) if x["first_hit_step"] else f"not within {steps}" for x in runs)
        space = f"{r['space']} {r['nodes']}" + (f" template={r['template']}" if r["template"] != "none" else "")
        lines.append(f"| {space} | {r['target']} ({r['target_distance_to_lstm']}) | {r['method']} | {first} | "
                     f"{sum(x['hits'] for x in runs)} | {min(x['min_distance'] for x in runs)} | "
                     f"{statistics.mean(x['final_mean_distance'] for x in runs):.2f} | "
                     f"{sum(x['inexact'] for x in runs)} | {r.get('commit') or '?'} |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], args: argparse.Namespace, path: Path) -> None:
    """Distance per window (mean over seeds of the window mean and of the window min), controller vs random."""
    spaces = list(dict.fromkeys((r["space"], r["nodes"], r["template"]) for r in results))
    targets = list(dict.fromkeys(r["target"] for r in results))
    fig, axes = plt.subplots(len(spaces), len(targets), figsize=(5.5 * len(targets), 3.6 * len(spaces)),
                             squeeze=False, sharey=True)
    colours = {"controller": "tab:blue", "random": "tab:orange"}
    for r in results:
        ax = axes[spaces.index((r["space"], r["nodes"], r["template"]))][targets.index(r["target"])]
        x = [args.window * (k + 1) for k in range(len(r["mean_window_mean"]))]
        ax.plot(x, r["mean_window_mean"], color=colours[r["method"]], label=f"{r['method']}: mean")
        ax.plot(x, r["mean_window_min"], color=colours[r["method"]], ls="--", label=f"{r['method']}: min")
        ax.set_title(f"{r['space']} {r['nodes']} nodes, template {r['template']}: target {r['target']}", fontsize=9)
        ax.set_xlabel("controller steps (draws)")
        ax.set_ylabel(f"edit distance per {args.window} steps")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"oracle search, reward 1/(1+d): mean over {args.seeds} seeds", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
