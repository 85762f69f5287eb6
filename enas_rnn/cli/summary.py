"""`enas-summary`: one table and a heatmap for a Hydra multirun folder of any app.

    enas-summary multirun/sweep/nth                                   # axes from the swept keys
    enas-summary multirun/sweep/nth --x task.seq_len --y model.hidden_size --metric test_acc --panel core
    enas-summary multirun/train/lr_bs --x train.lr --y data.batch_size --metric valid_ppl

Writes summary.csv (one row per job: its overrides, then the scalar entries of its metrics.json),
summary.md and heatmap_<metric>.png into the folder (or --out).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from enas_rnn import __version__
from enas_rnn.cli.common import friendly_errors
from enas_rnn.summary import SummaryConfig, summarize_multirun


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="enas-summary", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"enas_rnn {__version__}")
    p.add_argument("folder", help="a Hydra multirun folder (its job folders hold .hydra/overrides.yaml)")
    p.add_argument("--x", help="override key for the heatmap's columns (default: the first swept key)")
    p.add_argument("--y", help="override key for the heatmap's rows (default: the next swept key)")
    p.add_argument("--metric", help="metrics.json key to plot (default: test_acc, test_mae, test_ppl or valid_ppl)")
    p.add_argument("--panel", help="override key: one heatmap per value (default: core when swept; 'none': one)")
    p.add_argument("--out", help="output folder (default: the multirun folder)")
    p.add_argument("--no-plot", action="store_true", help="tables only")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    with friendly_errors():
        res = summarize_multirun(args.folder, SummaryConfig(args.x, args.y, args.metric, args.panel), args.out,
                                 plot=not args.no_plot)
        done = sum(r["status"] == "done" for r in res.rows)
        print(f"{len(res.rows)} jobs ({done} with metrics.json) -> {res.csv}")
        if res.axes is not None:
            x, y, metric, panel = res.axes
            print(f"heatmap of {metric} over {x} x {y}" + (f" per {panel}" if panel else "")
                  + (f" -> {res.heatmap}" if res.heatmap else ""))
        print(f"tables -> {res.markdown}")


if __name__ == "__main__":
    main(sys.argv[1:])
