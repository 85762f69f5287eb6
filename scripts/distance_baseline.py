#!/usr/bin/env python
"""How far from the LSTM is a cell drawn at random? The yardstick for a search winner's distance.

    python scripts/distance_baseline.py --space lstm --nodes 8 --cells 300 --seed 0
    python scripts/distance_baseline.py --space lstm --nodes 8 --template memory --cells 300
    python scripts/distance_baseline.py --space lstm --nodes 8 --cells 10000 --no-distance   # class shares only

Draws uniform cells until ``--cells`` are valid (not degenerate; with ``--require-bounded`` not
unbounded either), as random search does, and prints: the share of all draws that are degenerate
and that are unbounded (``Genotype.analysis()``), the growth classes (bounded / linear / unbounded)
among the valid cells, and the distribution of their graph edit distance to the space's reference
cell.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's enas_rnn, not an installed one

import torch  # noqa: E402

from enas_rnn.distance import distance_to_reference  # noqa: E402
from enas_rnn.spaces import make_space  # noqa: E402
from enas_rnn.spaces.growth import GROWTH_CLASSES  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="lstm")
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--template", default="none", help="space.template (lstm: none | memory)")
    ap.add_argument("--cells", type=int, default=300, help="valid cells to draw")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--require-bounded", action="store_true", help="valid cells must not be unbounded either")
    ap.add_argument("--no-distance", action="store_true", help="only the shares (no edit distances)")
    args = ap.parse_args()
    space = make_space(args.space, args.nodes, args.template)
    rng = torch.Generator().manual_seed(args.seed)
    draws, degenerate, unbounded = 0, 0, 0
    classes: Counter = Counter()
    values, exact, ref = [], 0, None
    while sum(classes.values()) < args.cells:
        g = space.sample(rng)
        a = g.analysis()
        draws += 1
        degenerate += a.degenerate()
        unbounded += a.unbounded()
        if a.degenerate() or (args.require_bounded and a.unbounded()):
            continue
        classes[a.growth] += 1
        if args.no_distance:
            continue
        ref, d = distance_to_reference(g)
        if d is None:
            raise SystemExit(f"error: the {args.space} space has no reference cell to measure a distance to")
        values.append(d.value)
        exact += d.exact
    what = f"{args.space} space, {args.nodes} nodes, template {args.template}, seed {args.seed}"
    print(f"{draws} uniform draws ({what}): {100 * degenerate / draws:.1f} % degenerate, "
          f"{100 * unbounded / draws:.1f} % unbounded")
    valid = "valid bounded/linear" if args.require_bounded else "valid"
    print(f"{args.cells} {valid} cells: " + ", ".join(f"{100 * classes[c] / args.cells:.1f} % {c}" for c in GROWTH_CLASSES))
    if values:
        values.sort()
        q = lambda f: values[min(len(values) - 1, int(f * len(values)))]  # noqa: E731
        print(f"distance to {ref}: min {values[0]}, p10 {q(0.1)}, median {q(0.5)}, p90 {q(0.9)}, max {values[-1]}, "
              f"mean {statistics.mean(values):.1f} ({exact} of {len(values)} exact)")


if __name__ == "__main__":
    main()
