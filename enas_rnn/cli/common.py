"""What every entry point shares: `--version`, unknown-key checks, friendly errors, the run folder.

Each app is ``main()`` = :func:`start` (checks that need no Hydra) + the app's ``@hydra.main`` function,
which runs its body inside :func:`friendly_errors`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import typing
from pathlib import Path
from typing import Any, Iterator, Sequence

from hydra.core.hydra_config import HydraConfig

from enas_rnn import __version__
from enas_rnn.errors import UserError

# The Hydra configs live in the checkout's conf/ (installed editable). An absolute path, because a
# relative config_path is resolved against the enas_rnn.cli package when an app runs as a console
# script, and conf/ is not a package.
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")

log = logging.getLogger("enas_rnn")

#: The apps, in the order `python -m enas_rnn` lists them: (command, module, one line).
APPS: tuple[tuple[str, str, str], ...] = (
    ("enas-pipeline", "enas_rnn.cli.pipeline", "the whole job: search -> shortlist retraining -> compare with nn.LSTM -> export"),
    ("enas-search", "enas_rnn.cli.search", "ENAS or random search with weight sharing on PTB; derive the best cells"),
    ("enas-train", "enas_rnn.cli.train", "train one language model (nn.LSTM or a cell) from scratch"),
    ("enas-compare", "enas_rnn.cli.compare", "retrain cells and nn.LSTM under one budget: same size and parameter-matched"),
    ("enas-export", "enas_rnn.cli.export", "a trained cell as a standalone PyTorch module + safetensors"),
    ("enas-mrs", "enas_rnn.cli.mrs", "do training-free scores (MRS, hidden covariance) predict trained perplexity?"),
    ("enas-sweep", "enas_rnn.cli.sweep", "synthetic tasks (nth-element recall, sine) for any core, swept with Hydra multirun"),
    ("enas-summary", "enas_rnn.cli.summary", "one table and heatmaps for the multirun folder of any app"),
    ("enas-compress", "enas_rnn.cli.compress", "pruning and k-means weight sharing of a trained run, retrained and exported"),
)


def start(schema: type, argv: Sequence[str] | None = None) -> None:
    """Runs before Hydra: ``--version``, and a readable error for a config key that does not exist."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--version" in args or "-V" in args:
        print(f"enas_rnn {__version__}")
        sys.exit(0)
    problem = unknown_key(schema, [a for a in args if not a.startswith("-")])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name) for f in dataclasses.fields(cls)}


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass a field holds (through Optional[...]), or None for plain values, lists and dicts."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def unknown_key(schema: type, overrides: Sequence[str]) -> str | None:
    """A message for the first ``key=value`` override whose key is not in the schema, listing the valid keys.

    Group choices (``model=lstm``, whose options Hydra lists itself), ``+``/``~`` edits and ``hydra.*``
    keys are left to Hydra.
    """
    groups = {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}
    for o in overrides:
        key = o.partition("=")[0]
        if "=" not in o or key.startswith(("hydra", "+", "~")) or "@" in key or ("." not in key and key in groups):
            continue
        cls, path = schema, []
        for part in key.split("."):
            fields = _fields(cls)
            if part not in fields:
                where = f"'{'.'.join(path)}'" if path else "the top level"
                return (f"unknown config key '{key}': {where} has no key '{part}'; valid keys there: "
                        f"{', '.join(sorted(fields))}")
            path.append(part)
            nxt = _dataclass_of(fields[part])
            if nxt is None:
                break
            cls = nxt
    return None


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Prints a user error as one readable line (no traceback) and exits with status 2.

    Errors a user can fix (missing data, bad genotype files, invalid config values, corrupt or
    missing checkpoints, a busy run folder) subclass UserError; the message names the fix.
    """
    try:
        yield
    except UserError as exc:
        _log_to_files(f"error: {exc}")
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        message = "interrupted: the last checkpoint is kept; continue with resume=<this run's folder>"
        _log_to_files(message)
        print(message, file=sys.stderr)
        sys.exit(130)


def _log_to_files(message: str) -> None:
    """Records a message in the run's log file(s) only (the console gets it once, on stderr)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def run_dir() -> Path:
    """The Hydra run (or multirun job) folder of the current app."""
    return Path(HydraConfig.get().runtime.output_dir)


def cli_overrides() -> list[str]:
    """The ``key=value`` overrides of the command line (what a resumed run must agree with)."""
    return list(HydraConfig.get().overrides.task)
