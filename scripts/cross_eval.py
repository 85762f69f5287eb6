"""Evaluate genotypes on the shared weights of one or more finished searches.

The derive perplexity of a search is measured on that search's own supernet, so the best cells of
two searches (e.g. ENAS and random search at the same budget) are compared fairly only when each is
evaluated on the same weights. This script does that: every genotype on every supernet, on the same
validation windows as derive.

    python scripts/cross_eval.py --runs outputs/search/A outputs/search/B \
        --cells outputs/search/A/best_genotype.json outputs/search/B/best_genotype.json
"""

from __future__ import annotations

import argparse
import json

from enas_rnn.supernet import load_supernet
from enas_rnn.genotype import load_genotype
from enas_rnn.supernet import evaluate_cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", required=True, help="enas-search run folders (their last checkpoint)")
    ap.add_argument("--cells", nargs="+", required=True, help="genotype names or JSON files")
    ap.add_argument("--batches", type=int, default=None, help="validation windows (default: each run's derive_batches)")
    args = ap.parse_args()
    cells = [(c, load_genotype(c)) for c in args.cells]
    results = []
    for run in args.runs:
        model, cfg, splits = load_supernet(run)
        n = args.batches or cfg.search.derive_batches
        ppls = evaluate_cells(model, [g for _, g in cells], splits.valid, cfg.data.bptt, n)
        for (name, g), ppl in zip(cells, ppls):
            results.append({"supernet": run, "cell": name, "hash": g.hash(), "ppl": ppl})
            print(json.dumps(results[-1]))


if __name__ == "__main__":
    main()
