#!/usr/bin/env python
"""Draw a genotype to an image.

    python scripts/draw_cell.py lstm -o lstm.png
    python scripts/draw_cell.py enas_paper -o enas_paper.png
    python scripts/draw_cell.py outputs/run/genotype.json -o best.png --canonical
"""

from __future__ import annotations

import argparse
import sys

import matplotlib.pyplot as plt

from enas_rnn.genotype import NAMED, GenotypeError, load_genotype
from enas_rnn.viz import draw_genotype


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("genotype", help=f"a genotype JSON file or a named cell ({', '.join(sorted(NAMED))})")
    p.add_argument("-o", "--output", required=True, help="image file (format from the suffix, e.g. .png, .svg)")
    p.add_argument("--title", default=None, help="figure title (default: name, space, hash)")
    p.add_argument("--canonical", action="store_true", help="draw the canonical form (dead nodes dropped)")
    args = p.parse_args(argv)
    try:
        g = load_genotype(args.genotype)
    except GenotypeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.canonical:
        g = g.canonical()
    fig = draw_genotype(g, args.output, title=args.title)
    plt.close(fig)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
