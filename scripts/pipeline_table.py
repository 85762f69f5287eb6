#!/usr/bin/env python
"""One markdown table over several enas-pipeline folders (a study's evidence).

    python scripts/pipeline_table.py outputs/study/*            # every folder holding summary.md

Per pipeline: strategy, degenerate-cell handling, seed, screen, degenerate share of proposals (overall and
last epoch), the derived winner's shared-weight perplexity, whether retraining overturned the shared-weight
ranking, the winner's memory and edit distance to its space's reference cell, its test perplexity against
nn.LSTM at matched parameters (mean over the comparison's seeds, and the ratio), and the pipeline's wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from enas_rnn.stats import fmt_num, to_markdown


def row(folder: Path) -> dict:
    cfg = json.loads((folder / "pipeline_config.json").read_text())
    m = json.loads((folder / "metrics.json").read_text())
    s, v, w = m["search"], m["verdict"], m["winner_analysis"]
    wall = json.loads((folder / "search" / "metrics.json").read_text()).get("wall_s", 0.0)
    runs = json.loads((folder / "compare" / "comparison.json").read_text())["runs"]
    train_s = sum(r["wall_s"] or 0 for r in runs if not str(r["status"]).startswith("same run"))
    share = s.get("degenerate_share")
    last = s.get("degenerate_share_last_epoch")
    return {
        "pipeline": folder.name, "strategy": cfg["search"]["strategy"], "degenerate": cfg["search"].get("degenerate", "off"),
        "screen": cfg["screen"]["name"], "seed": cfg["seed"],
        "degenerate proposals": fmt_num(None if share is None else 100 * share, ".0f", "–") + " %",
        "last epoch": fmt_num(None if last is None else 100 * last, ".0f", "–") + " %",
        "shared ppl": fmt_num(s["best_ppl"], ".0f"),
        "retraining overturned": "no" if m["shortlist"][0]["chosen"] else "yes",
        "memory": {True: "yes", False: "NO", None: "n/a"}[w["has_memory"]],
        "reads input": "yes" if w["depends_on_input"] else "NO",
        # Distance to the space's reference cell (lstm, or enas_paper in the enas space); "<=" marks an upper bound.
        "distance to reference": ("" if w.get("distance_exact", True) else "<= ")
        + fmt_num(w["reference_distance"], "d", "–") + (f" ({w['reference']})" if w.get("reference") else ""),
        "winner test ppl": fmt_num(v.get("cell_test_ppl"), ".1f", "–"),
        "nn.LSTM": fmt_num(v.get("lstm_test_ppl"), ".1f", "–"),
        "vs nn.LSTM": fmt_num(None if v.get("ratio") is None else 100 * v["ratio"], "+.1f", "–") + " %",
        "p": fmt_num(v.get("p_value"), ".3g", "–"),
        "search min": fmt_num(wall / 60, ".0f"), "trainings min": fmt_num(train_s / 60, ".0f"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    args = ap.parse_args(argv)
    rows = [row(f) for f in args.folders if (f / "metrics.json").is_file() and (f / "pipeline_config.json").is_file()]
    if not rows:
        print("no finished pipeline among the folders", file=sys.stderr)
        return 1
    print(to_markdown(rows, list(rows[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
