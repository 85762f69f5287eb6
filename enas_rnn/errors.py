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


class WorseThanChance(TrainingDiverged):
    """A run that ended worse than guessing: a language model whose best validation perplexity is above
    its vocabulary size (a uniform guess), or a synthetic-task model below the task's chance level.

    Such weights are no result, whatever the loss did on the way: the run stops with this error, not
    with "done". A subclass of :class:`TrainingDiverged`, so every caller that records a divergence
    records this too.
    """
