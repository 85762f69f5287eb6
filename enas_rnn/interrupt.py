"""Interrupts that end a run at a step boundary with a checkpoint, never in the middle of a step.

A cluster's time limit sends SIGTERM (then SIGKILL after a grace period); a person presses Ctrl-C
(SIGINT). Either only *requests* a stop: the handler sets a flag, the training loop
(:func:`enas_rnn.train.fit`) looks at it between windows, writes a checkpoint of the current step
and raises :class:`Interrupted`. A Ctrl-C once a stop was requested raises ``KeyboardInterrupt`` at
once, for a loop that does not look (a long evaluation, a hung data read).

The handlers replace whatever was there (submitit, for one, handles SIGTERM itself for its requeue
logic); :func:`uninstall` puts those back.

Nothing is installed at import: an app calls :func:`install` once it has claimed its run folder
(tests and library users keep Python's default handlers unless they ask). The contract for an app::

    interrupt.install()
    try:
        fit(...)                                  # or anything that calls it
    except interrupt.Interrupted as exc:
        raise exc.with_folder(run_dir) from None  # the message then names resume=<run_dir>
    finally:
        interrupt.uninstall()
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Optional

from enas_rnn.errors import UserError

__all__ = ["Interrupted", "install", "uninstall", "requested", "requested_by", "reset", "request", "RESUME_PLACEHOLDER"]

#: What the message says in place of the run folder until the caller names it (:meth:`Interrupted.with_folder`).
RESUME_PLACEHOLDER = "<folder>"

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_requested: Optional[str] = None  # the name of the signal that asked, None while nobody did
_previous: dict[int, Any] = {}  # the handlers install() replaced, for uninstall()


class Interrupted(UserError):
    """The run stopped between two steps because a stop was requested (SIGTERM, SIGINT).

    ``step`` is the last finished step; ``saved`` says whether a checkpoint of that step was written.
    The message reads "interrupted at step N (SIGTERM); the checkpoint of step N is kept; continue
    with resume=<folder>": the loop does not know its run folder, so ``<folder>`` stays a placeholder
    until the caller fills it with :meth:`with_folder`.
    """

    def __init__(self, step: int, signal_name: Optional[str] = None, saved: bool = True,
                 folder: Optional[str] = None) -> None:
        self.step, self.signal_name, self.saved = int(step), signal_name, saved
        self.folder = folder
        where = folder if folder is not None else RESUME_PLACEHOLDER
        by = f" ({signal_name})" if signal_name else ""
        if saved:
            text = f"interrupted at step {step}{by}; the checkpoint of step {step} is kept; continue with resume={where}"
        else:
            text = (f"interrupted at step {step}{by}; no checkpoint was written (the loop had nowhere to save); "
                    "start the run again")
        super().__init__(text)

    def with_folder(self, folder: Any) -> "Interrupted":
        """The same interruption, its message naming ``resume=<folder>``."""
        return Interrupted(self.step, self.signal_name, self.saved, str(folder))


def _handle(signum: int, frame: Optional[FrameType]) -> None:
    global _requested
    name = signal.Signals(signum).name
    if signum == signal.SIGINT and _requested is not None:
        raise KeyboardInterrupt  # the second Ctrl-C: the user does not want to wait for the boundary
    _requested = name


def install() -> bool:
    """Puts the flag-setting handlers for SIGTERM and SIGINT in place and clears an earlier request.

    Returns False (and changes nothing) outside the main thread, where Python cannot set handlers;
    the run then keeps the default behaviour of the signals. Installing twice keeps the first
    saved handlers, so :func:`uninstall` always restores what was there before.
    """
    reset()
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in _SIGNALS:
        old = signal.signal(sig, _handle)
        _previous.setdefault(sig, old)
    return True


def uninstall() -> None:
    """Restores the handlers :func:`install` replaced (a no-op when nothing is installed)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig, old in list(_previous.items()):
        signal.signal(sig, old if old is not None else signal.SIG_DFL)
        del _previous[sig]


def requested() -> bool:
    """Whether a stop was requested since the last :func:`reset` (or :func:`install`)."""
    return _requested is not None


def requested_by() -> Optional[str]:
    """The name of the signal that requested the stop (``"SIGTERM"``), None when none did."""
    return _requested


def request(name: str = "request") -> None:
    """Requests a stop from code, as a signal would (a time budget, a test)."""
    global _requested
    _requested = name


def reset() -> None:
    """Forgets a request (the next run in the same process starts clean)."""
    global _requested
    _requested = None
