#!/usr/bin/env python
"""One markdown table over a study's enas-pipeline runs, from their metrics.json files.

    python scripts/pipeline_table.py docs/results/default docs/results/study23   # folders of metrics.json files
    python scripts/pipeline_table.py outputs/pipeline/*                          # or pipeline folders
    python scripts/pipeline_table.py docs/results/study22 --columns selection    # the selection study's columns

A row per pipeline (sorted by arm, then seed): what ran (space, template, strategy, selection, the options
that differ from the defaults) and what it gave (the winner against nn.LSTM at matched parameters, the
supernet's and the rungs' Kendall tau, the exploding shared windows, the stage times). Every figure comes
from the run's metrics.json; ``--arms`` adds one line per arm with the mean over its seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

from enas_rnn.stats import fmt_num, to_markdown


def find(paths: list[Path]) -> list[Path]:
    """Every metrics.json of an enas-pipeline under the given folders (or the files themselves)."""
    out = []
    for p in paths:
        if p.is_file():
            out.append(p)
        elif (p / "metrics.json").is_file() and (p / "summary.md").exists() or (p / "metrics.json").is_file():
            out.append(p / "metrics.json")
        else:
            out += sorted(p.rglob("metrics.json"))
    return [p for p in out if "verdict" in json.loads(p.read_text())]


def _get(d: Any, path: str, default: Any = None) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def arm_of(m: dict) -> str:
    """What ran, in a few words: the space (and template), the search strategy, the selection, the options."""
    c = m.get("config") or {}
    space = _get(c, "space.name", "?") + ("+" + _get(c, "space.template") if _get(c, "space.template", "none")
                                          not in ("none", None) else "")
    parts = [f"{space} space", f"{_get(c, 'search.strategy', '?')} search", _get(c, "select.strategy", "?")]
    if _get(c, "select.prescreen", "none") != "none":
        parts.append("prescreen=" + _get(c, "select.prescreen"))
    for key, default in (("search.unbounded", "off"), ("search.degenerate", "mask")):
        if _get(c, key, default) != default:
            parts.append(f"{key}={_get(c, key)}")
    if _get(c, "search.skip_exploding", False):
        parts.append("search.skip_exploding=true")
    if _get(c, "shared_train.lr", 20.0) != 20.0:
        parts.append(f"shared_train.lr={_get(c, 'shared_train.lr'):g}")
    seeds = list(_get(c, "compare.seeds", [0, 1]))
    if seeds != [0, 1]:
        parts.append("compare.seeds=[" + ",".join(str(x) for x in seeds) + "]")
    if _get(c, "supernet.state_clip", 25.0) != 25.0:
        parts.append(f"supernet.state_clip={_get(c, 'supernet.state_clip')}")
    return ", ".join(parts)


def _summary(m: dict, model: str, sizing: str) -> dict:
    for s in m.get("compare_summary") or []:
        if s["model"] == model and s["sizing"] == sizing:
            return s
    return {}


def row(path: Path, columns: str) -> dict[str, Any]:
    m = json.loads(path.read_text())
    v, s, w, sel = m["verdict"], m["search"], m.get("winner_analysis") or {}, m.get("select") or {}
    fid = m.get("fidelity") or sel.get("fidelity") or {}
    times = m.get("stage_seconds") or {}
    gru = _summary(m, "nn_gru", "matched")
    out: dict[str, Any] = {"arm": arm_of(m), "seed": _get(m, "config.seed", "?")}
    tau = lambda k: fmt_num(_get(fid, f"{k}.tau"), "+.2f", "–")  # noqa: E731
    if columns == "selection":
        out.update({
            "selection": sel.get("strategy", "?"),
            "rungs": " / ".join(f"{p['cells']}x{p['steps']}" for p in sel.get("plan") or []),
            "supernet tau": tau("supernet"), "rung 0 tau": tau("rung0"),
            "winner kept supernet's best": {True: "yes", False: "no", None: "–"}[sel.get("supernet_best_kept")],
        })
    else:
        share = s.get("exploding_share")
        out.update({
            "exploding windows": fmt_num(None if share is None else 100 * share, ".0f", "–") + " %",
            "unbounded proposals": fmt_num(None if s.get("unbounded_share") is None else 100 * s["unbounded_share"],
                                           ".0f", "–") + " %",
            "supernet tau": tau("supernet"),
            "memory": {True: "yes", False: "NO", None: "n/a"}[w.get("has_memory")],
            "distance to reference": ("" if w.get("distance_exact", True) else "<= ")
            + fmt_num(w.get("reference_distance"), "d", "–"),
        })
    out.update({
        "winner test ppl": fmt_num(v.get("cell_test_ppl"), ".1f", "–"),
        "nn.LSTM": fmt_num(v.get("lstm_test_ppl"), ".1f", "–"),
        "vs nn.LSTM": fmt_num(None if v.get("ratio") is None else 100 * v["ratio"], "+.1f", "–") + " %",
        "p": fmt_num(v.get("p_value"), ".2g", "–"),
    })
    if gru:
        base = v.get("lstm_test_ppl")
        out["nn.GRU (matched)"] = fmt_num(gru.get("test_ppl_mean"), ".1f", "–") + (
            f" ({100 * (gru['test_ppl_mean'] / base - 1):+.1f} %)" if base and gru.get("test_ppl_mean") else "")
    out["stages (min)"] = " / ".join(fmt_num(times.get(k, 0.0) / 60, ".1f") for k in ("search", "select", "compare"))
    out["_ratio"] = v.get("ratio")
    return out


def arm_lines(rows: list[dict]) -> list[dict]:
    """Per arm: the mean ratio to nn.LSTM over its seeds, the worst seed, and how many seeds."""
    arms: dict[str, list[float]] = {}
    for r in rows:
        if r["_ratio"] is not None and math.isfinite(r["_ratio"]):
            arms.setdefault(r["arm"], []).append(100 * r["_ratio"])
    return [{"arm": a, "seeds": len(x), "mean vs nn.LSTM": f"{statistics.fmean(x):+.1f} %",
             "worst seed": f"{max(x):+.1f} %"} for a, x in arms.items()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--columns", choices=("search", "selection"), default="search")
    ap.add_argument("--arms", action="store_true", help="also print the mean over seeds per arm")
    args = ap.parse_args(argv)
    rows = [row(p, args.columns) for p in find(args.paths)]
    if not rows:
        print("no finished pipeline among the paths", file=sys.stderr)
        return 1
    rows.sort(key=lambda r: (r["arm"], str(r["seed"])))
    cols = [k for k in rows[0] if not k.startswith("_")]
    print(to_markdown(rows, cols))
    if args.arms:
        lines = arm_lines(rows)
        print(to_markdown(lines, list(lines[0])) if lines else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
