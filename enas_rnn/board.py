"""TensorBoard as a user reads it: run names that say what ran, the keys that define a run, cells as formulas.

* :func:`open_writer` writes to ``<run>/tb/<name>`` so a TensorBoard over many run folders lists
  ``<run>/tb/search-lstm-enas-seed0`` instead of a column of identical ``<run>/tb``;
* :func:`hparams` keeps the keys that define a run of the app plus every key the command line set
  (the swept ones in a multirun), instead of the whole flattened config;
* :func:`cell_markdown` shows a cell the way the exported module's docstring writes it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from enas_rnn.genotype import Genotype

__all__ = ["open_writer", "hparams", "write_hparams", "cell_markdown", "DEFINING_KEYS", "PPL_CAP"]

#: Cap of perplexity charts and hparam metrics: a diverged model's 1e10 would flatten every other curve.
PPL_CAP = 5000.0

#: Per app, the config keys that define a run (shown in the HParams tab next to the swept ones).
DEFINING_KEYS: dict[str, tuple[str, ...]] = {
    "train": ("model.core", "cell", "model.hidden_size", "model.num_layers", "train.lr", "train.max_steps",
              "data.name", "seed"),
    "search": ("search.strategy", "space.name", "space.num_nodes", "space.template", "screen.name",
               "search.degenerate", "search.unbounded", "model.hidden_size", "search.epochs", "seed"),
}


def open_writer(run_dir: str | Path, name: str, purge_step: Optional[int] = None) -> SummaryWriter:
    """A SummaryWriter for ``<run_dir>/tb/<name>`` (``name`` made safe for a folder)."""
    safe = re.sub(r"[^A-Za-z0-9_.=-]+", "-", name).strip("-") or "run"
    return SummaryWriter(str(Path(run_dir) / "tb" / safe), purge_step=purge_step)


def hparams(cfg: Any, app: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The defining keys of ``app`` plus the overridden ones, as TensorBoard hparams (scalars and strings)."""
    keys = list(DEFINING_KEYS.get(app, ()))
    for o in overrides:
        key = o.partition("=")[0].lstrip("+~")
        if "=" in o and not key.startswith("hydra") and "@" not in key and key not in keys:
            keys.append(key)
    out: dict[str, Any] = {}
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None)
        if OmegaConf.is_config(value):
            continue  # a whole group: its leaves are listed when they are overridden
        value = getattr(value, "value", value)  # enums
        out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def write_hparams(writer: SummaryWriter, values: dict[str, Any], metrics: dict[str, float], step: int = 0) -> None:
    """The run's hparams and its metrics, without an experiment summary.

    ``SummaryWriter.add_hparams`` also writes an experiment summary, and TensorBoard shows the first one it
    finds for the whole logdir: one TensorBoard over train and search runs then hides the other app's
    metrics. Without it TensorBoard builds the table from every run's own hparams and ``hparam/*`` scalars.
    """
    _, start, end = hparams_summary(values, metrics)
    writer.file_writer.add_summary(start, step)
    writer.file_writer.add_summary(end, step)
    for key, value in metrics.items():
        writer.add_scalar(key, value, step)


def cell_markdown(g: Genotype, note: str = "") -> str:
    """A cell as formulas in a code block, with its hash, space and what it can do."""
    a = g.analysis()
    facts = (f"`{g.hash()}`, {g.space} space; output depends on the input: {'yes' if a.depends_on_input else 'no'}"
             + ("" if a.has_memory is None else f"; working memory: {'yes' if a.has_memory else 'no'}"))
    return (f"{note}\n\n" if note else "") + facts + "\n\n```\n" + "\n".join(g.formula()) + "\n```"
