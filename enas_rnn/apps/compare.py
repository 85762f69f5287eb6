"""`enas-compare`'s body: claim the comparison folder, then :func:`enas_rnn.comparison.run_compare`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from omegaconf import DictConfig

from enas_rnn.comparison import CellEntry, CompareConfig, load_cells, run_compare
from enas_rnn.genotype import Genotype
from enas_rnn.launch import make_executor
from enas_rnn.rules import check_values
from enas_rnn.runfolder import Claim, RunFolder, identity_of, resumed_config

__all__ = ["run_compare_app", "APP"]

APP = "enas-compare"


def compare_identity(cfg: Any, cells: Sequence[CellEntry]) -> dict[str, Any]:
    """A comparison's identity: its config without where the genotypes lie, and the genotypes themselves."""
    ident = identity_of(cfg)
    ident.pop("cell", None)
    ident.pop("extra_cells", None)
    ident["cells"] = [{"label": c.label, "spec": c.spec, "genotype": c.genotype.to_dict()} for c in cells]
    return ident


def run_compare_app(cfg: DictConfig, folder: str | Path, mode: str, overrides: Sequence[str] = (),
                    log_file: Optional[str] = "compare.log", hydra_record: Optional[Mapping[str, str]] = None
                    ) -> dict[str, Any]:
    """Runs (or continues, or reads back) a comparison in ``folder``; returns its report."""
    folder = Path(folder)
    run = RunFolder(folder, APP)
    if mode == "resume":
        cfg, extras = resumed_config(run, CompareConfig, cfg, overrides, ("device", "launcher"), ("cells",))
        cells = [CellEntry(c["label"], c["spec"], Genotype.from_dict(c["genotype"])) for c in extras["cells"]]
    else:
        cells = load_cells([s for s in [cfg.cell, *cfg.extra_cells] if s])
    check_values(cfg, CompareConfig)
    with run.session(compare_identity(cfg, cells), mode, log_file=log_file, hydra_record=hydra_record) as claim:
        if claim == Claim.reuse:
            return json.loads((folder / "comparison.json").read_text())
        report = run_compare(cfg, folder, cells, make_executor(cfg.launcher, folder))
        run.finish()
        return report
