#!/usr/bin/env python
"""How far from the LSTM is a cell drawn at random? The yardstick for a search winner's distance.

    python scripts/distance_baseline.py --space lstm --nodes 8 --cells 300 --seed 0

Draws ``--cells`` genotypes uniformly from the valid (non-degenerate) subset of the space, as random
search does, and prints the distribution of their graph edit distance to the space's reference cell.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from enas_rnn.distance import distance_to_reference
from enas_rnn.spaces import make_space


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="lstm")
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--cells", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    space = make_space(args.space, args.nodes)
    rng = torch.Generator().manual_seed(args.seed)
    values, exact, ref = [], 0, None
    for _ in range(args.cells):
        g = space.sample(rng, accept=lambda g: not g.is_degenerate())
        ref, d = distance_to_reference(g)
        if d is None:
            raise SystemExit(f"error: the {args.space} space has no reference cell to measure a distance to")
        values.append(d.value)
        exact += d.exact
    values.sort()
    q = lambda f: values[min(len(values) - 1, int(f * len(values)))]  # noqa: E731
    print(f"{args.cells} valid {args.space} cells ({args.nodes} nodes, seed {args.seed}), distance to {ref}: "
          f"min {values[0]}, p10 {q(0.1)}, median {q(0.5)}, p90 {q(0.9)}, max {values[-1]}, "
          f"mean {statistics.mean(values):.1f} ({exact} exact)")


if __name__ == "__main__":
    main()
