"""What every entry point shares: friendly errors and the run folder."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Iterator

from hydra.core.hydra_config import HydraConfig

from enas_rnn.errors import UserError

# The Hydra configs live in the checkout's conf/ (installed editable). An absolute path, because a
# relative config_path is resolved against the enas_rnn.cli package when an app runs as a console
# script, and conf/ is not a package.
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Prints a user error as one readable line (no traceback) and exits with status 2.

    Errors from our own modules that a user can fix (missing data, bad genotype files, invalid
    config values, corrupt checkpoints) subclass UserError.
    """
    try:
        yield
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def run_dir() -> Path:
    """The Hydra run (or multirun job) folder of the current app."""
    return Path(HydraConfig.get().runtime.output_dir)
