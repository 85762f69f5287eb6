"""`enas-export`'s body: find the checkpoint (a run folder or ``checkpoint=``), load it, export it.

The library parts are :mod:`enas_rnn.trained` (finding and loading a trained run) and :mod:`enas_rnn.export`
(the standalone module).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from enas_rnn.errors import ConfigError
from enas_rnn.export import ExportResult, export_trained
from enas_rnn.trained import load_trained, resolve_run

__all__ = ["run_export", "default_out"]


def default_out(cfg: DictConfig) -> Path:
    """``out=``, else ``<run>/export``, else the export folder of the checkpoint's run."""
    if cfg.out:
        return Path(cfg.out)
    if cfg.run:
        return Path(cfg.run) / "export"
    return Path(cfg.checkpoint).resolve().parent.parent / "export"


def run_export(cfg: DictConfig) -> ExportResult:
    """`enas-export`: run=<folder> or checkpoint=<file> [cell=<genotype>] -> <out>/<name>.{py,safetensors}."""
    if bool(cfg.run) == bool(cfg.checkpoint):
        raise ConfigError("pass exactly one of run=<enas-train, enas-compare or enas-pipeline folder> or "
                          "checkpoint=<file> (with cell=<name or genotype.json> to check it against the weights)")
    if cfg.run:
        ckpt, suggested = resolve_run(cfg.run)
    else:
        ckpt, suggested = Path(cfg.checkpoint), None
    trained = load_trained(ckpt, cfg.cell)
    name = cfg.name or suggested or trained.name
    return export_trained(trained, default_out(cfg), name, bool(cfg.whole_model))
