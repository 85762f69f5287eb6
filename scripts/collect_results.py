#!/usr/bin/env python
"""Copy the small record of finished pipelines into docs/results/<study>/<name>/metrics.json (no checkpoints).

    python scripts/collect_results.py --out docs/results/study23 <pipeline folder> [<pipeline folder> ...]

``<name>`` is the pipeline folder's name. Only metrics.json is copied: every number of the README's tables
comes from it (``scripts/pipeline_table.py`` regenerates them). Paths of the machine the run was made on
are not copied: a path inside the pipeline folder becomes ``<run>/...``, any other absolute path
``<elsewhere>/<its last part>`` (a data folder, a baseline cache), so the record names no local folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def portable(value: Any, run: Path) -> Any:
    """``value`` with every absolute path made machine-independent (see the module's docstring)."""
    if isinstance(value, dict):
        return {k: portable(v, run) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v, run) for v in value]
    if isinstance(value, str) and value.startswith("/") and " " not in value:
        path = Path(os.path.normpath(value))
        try:
            return "<run>/" + path.relative_to(run).as_posix()
        except ValueError:
            return "<elsewhere>/" + path.name
    return value


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
        record = portable(json.loads(src.read_text()), folder.resolve())
        dest.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
        n += 1
    print(f"{n} pipeline(s) -> {args.out}")
    return 0 if n else 1


if __name__ == "__main__":
    sys.exit(main())
