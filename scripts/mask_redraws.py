#!/usr/bin/env python
"""How many controller draws does constrained decoding redraw? (search.degenerate / search.unbounded = mask)

    python scripts/mask_redraws.py --space lstm --nodes 8 --draws 5000 --seed 0

The untrained controller (default ``ControllerConfig``, as at the start of a search) draws ``--draws``
cells with the output decisions masked (``SearchSpace.allowed``), once masking degenerate cells only
(``search.degenerate=mask``) and once masking degenerate and unbounded cells (``search.unbounded=mask``
too). A draw whose node prefix admits no valid output comes out invalid and is redrawn by the search
(no evaluation, no gradient); the share of such draws is printed, beside the share of uniform draws that
random search rejects for the same rule.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's enas_rnn, not an installed one

import torch  # noqa: E402

from enas_rnn.controller import Controller, ControllerConfig  # noqa: E402
from enas_rnn.spaces import make_space  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="lstm")
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--template", default="none")
    ap.add_argument("--draws", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    space = make_space(args.space, args.nodes, args.template)
    print(f"{args.space} space, {args.nodes} nodes, template {args.template}: {args.draws} draws per row, seed {args.seed}")
    for label, bounded in (("degenerate masked", False), ("degenerate and unbounded masked", True)):
        def bad(g, bounded=bounded):  # noqa: ANN001
            return g.is_degenerate() or (bounded and g.is_unbounded())

        torch.manual_seed(args.seed)
        controller = Controller(space, ControllerConfig())
        constraint = functools.partial(space.allowed, require_memory=True, require_bounded=bounded)
        gen = torch.Generator().manual_seed(args.seed)
        redrawn = sum(bad(controller.draw(gen, constraint)) for _ in range(args.draws))
        gen = torch.Generator().manual_seed(args.seed)
        rejected = sum(bad(space.sample(gen)) for _ in range(args.draws))
        print(f"  {label}: untrained controller with the mask redraws {100 * redrawn / args.draws:.1f} % of its draws; "
              f"random search rejects {100 * rejected / args.draws:.1f} % of uniform draws")


if __name__ == "__main__":
    main()
