#!/usr/bin/env python
"""Copy the small record of finished pipelines into docs/results/<study>/<name>/metrics.json (no checkpoints).

    python scripts/collect_results.py --out docs/results/study23 <pipeline folder> [<pipeline folder> ...]

``<name>`` is the pipeline folder's name. Only metrics.json is copied: every number of the README's tables
comes from it (``scripts/pipeline_table.py`` regenerates them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    n = 0
    for folder in args.folders:
        src = folder / "metrics.json"
        if not src.is_file() or "verdict" not in json.loads(src.read_text()):
            print(f"skipped {folder}: no finished pipeline there", file=sys.stderr)
            continue
        dest = args.out / folder.name / "metrics.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)
        n += 1
    print(f"{n} pipeline(s) -> {args.out}")
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
