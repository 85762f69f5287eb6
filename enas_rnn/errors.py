"""User-facing errors: each carries one readable message that names the problem and the fix.

Entry points catch :class:`UserError` and print its message without a traceback (see
:func:`enas_rnn.cli.common.friendly_errors`). Subclasses exist so tests and callers can tell
the kinds apart.
"""

from __future__ import annotations


class UserError(RuntimeError):
    """Base class of errors caused by input the user can fix (data, config, files)."""


class ConfigError(UserError, ValueError):
    """An invalid config value; the message names the key and the valid options."""


class CheckpointError(UserError):
    """A missing, corrupt or incompatible checkpoint."""


class TrainingDiverged(UserError):
    """Too many non-finite losses or gradients; the run stopped before corrupting its weights."""
