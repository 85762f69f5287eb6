"""One protocol for every run folder: which config made it, and whether a command may start it,
continue it, reuse it, or must refuse it.

Every app (and every job inside one: a comparison's runs, a selection's cells, a pipeline's stages)
claims its folder through :class:`RunFolder` before it writes anything::

    <folder>/run.json   {"app", "version", "identity", "status", "invocations": [...], "seconds": {...}}
    <folder>/.lock      an OS file lock held while a process works in the folder

``identity`` is the run's config with one ignore list (:data:`IGNORED`: keys that do not change a
result, such as the device or a progress bar). A claim is

* ``fresh``: the folder holds no run; it gets ``run.json`` (status ``running``);
* ``resume``: the folder holds an unfinished run with this identity (``resume=`` or an inner job);
* ``reuse``: the folder holds a finished run with this identity (an inner job, or ``resume=`` of a
  finished run): nothing is written, the caller reads the results back;
* refused (:class:`~enas_rnn.errors.ConfigError`): another run (different settings or another app), or a
  new command into a folder that holds a run. A refused claim changes nothing in the folder.

A run that fails before it produced anything (no file beyond what the claim wrote) is released: its
``run.json``, Hydra record and log are removed again, so the corrected command starts there afresh.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from enas_rnn import __version__
from enas_rnn.checkpoint import write_text_atomic
from enas_rnn.errors import ConfigError, TrainingDiverged, UserError

__all__ = ["MARKER", "IGNORED", "TERMINAL", "Claim", "RunFolder", "RunFolderBusy", "identity_of", "diff_keys",
           "check_resume_overrides", "resumed_config", "LOG_FORMAT"]

log = logging.getLogger(__name__)

MARKER = "run.json"
LOCK = ".lock"
#: Keys of a config that never change a run's results: dropped from its identity. Dotted paths name one
#: key; a bare name is dropped at any depth (every ``progress`` flag).
IGNORED: tuple[str, ...] = ("resume", "device", "experiment", "launcher", "hydra", "search_from", "progress")
#: What the file log of a run looks like (the console gets shorter lines).
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] %(message)s"
#: Files a run folder may hold without holding a run (older enas_rnn versions' markers count as a run).
_LEGACY_MARKERS = ("metrics.json", "checkpoints", "search_history.jsonl", "diverged.json", "pipeline_config.json",
                   "run_config.json", "study_config.json", "comparison.json")


class RunFolderBusy(UserError):
    """Another process holds the run folder's lock."""


class Claim(str, Enum):
    """What a command may do in a folder (see the module docstring)."""

    fresh = "fresh"
    resume = "resume"
    reuse = "reuse"


def _drop(d: Any, ignored: tuple[str, ...]) -> Any:
    if not isinstance(d, dict):
        return d
    out = {}
    for k, v in d.items():
        if k in ignored:
            continue
        nested = tuple(i.split(".", 1)[1] for i in ignored if "." in i and i.split(".", 1)[0] == k)
        bare = tuple(i for i in ignored if "." not in i)
        out[k] = _drop(v, nested + bare) if isinstance(v, dict) else v
    return out


def identity_of(cfg: Any, extra: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """A run's identity: its config as plain data without the :data:`IGNORED` keys, plus ``extra``
    (e.g. the genotype a cell run trains, which the config names only by a path)."""
    d = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if isinstance(cfg, DictConfig) else dict(cfg)
    d = _drop(json.loads(json.dumps(d, default=str)), IGNORED)
    if extra:
        d.update(json.loads(json.dumps(dict(extra), default=str)))
    return d


def diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b)):
            out += diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "(the whole config)"]


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


#: Statuses after which a run is never continued: its results (or its divergence) are read back.
TERMINAL = ("finished", "diverged")


@dataclass
class RunFolder:
    """A run folder and the app that runs in it (``enas-train``, ``enas-search``, ...)."""

    path: Path
    app: str
    _lock_fd: Optional[int] = field(default=None, repr=False)
    _created: list[Path] = field(default_factory=list, repr=False)
    _handler: Optional[logging.Handler] = field(default=None, repr=False)
    _log_path: Optional[Path] = field(default=None, repr=False)
    _log_created: bool = field(default=False, repr=False)
    _t0: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    # ------------------------------------------------------------------ reading
    @property
    def marker(self) -> Path:
        return self.path / MARKER

    def record(self) -> Optional[dict[str, Any]]:
        """The folder's ``run.json``, None when there is none."""
        if not self.marker.is_file():
            return None
        try:
            return json.loads(self.marker.read_text())
        except ValueError:
            raise ConfigError(f"{self.marker} is unreadable (not JSON): the folder's run cannot be identified; "
                              "start the run in a new folder") from None

    def legacy(self) -> list[str]:
        """Files of a run written by an older enas_rnn (no run.json)."""
        return [m for m in _LEGACY_MARKERS if (self.path / m).exists()]

    @property
    def status(self) -> Optional[str]:
        """``running`` (or a crashed process), ``interrupted``, ``failed``, ``diverged``, ``finished``; None: no run."""
        rec = self.record()
        return None if rec is None else rec.get("status")

    # ------------------------------------------------------------------ deciding
    def decide(self, identity: Mapping[str, Any], mode: str) -> Claim:
        """The claim a command may make, or a ConfigError that says why not and what to do; writes nothing.

        ``mode``: ``new`` (a fresh command: the folder must hold no run), ``resume`` (``resume=``: the folder
        must hold a run of this app; its own identity counts), ``job`` (an inner job: fresh, resumed or
        reused by identity).
        """
        rec = self.record()
        if rec is None:
            old = self.legacy()
            if old:
                if mode == "new":
                    raise ConfigError(
                        f"{self.path} already holds a run ({', '.join(old)}); nothing was changed. Start a new run in "
                        "another folder (drop hydra.run.dir= for a fresh one)")
                raise ConfigError(f"{self.path} holds a run written by an older enas_rnn ({', '.join(old)}, no "
                                  f"{MARKER}): it cannot be resumed or reused; start it again in a new folder")
            if mode == "resume":
                if not self.path.is_dir():
                    raise ConfigError(f"resume={self.path}: no such folder; pass the folder of an earlier {self.app} run")
                raise ConfigError(f"resume={self.path}: no {self.app} run there ({MARKER} missing): drop resume= to "
                                  "start one")
            return Claim.fresh
        app, status = rec.get("app"), rec.get("status")
        if app != self.app:
            raise ConfigError(f"{self.path} holds an {app} run, not an {self.app} run: continue it with "
                              f"{app} resume={self.path}, or start this one in another folder")
        if mode == "new":
            if status in TERMINAL:
                raise ConfigError(
                    f"{self.path} already holds a finished run ({MARKER}, status {status}); nothing was changed. "
                    "Read its results there, or start a new run in another folder (drop hydra.run.dir= for a "
                    "fresh one)")
            raise ConfigError(
                f"{self.path} already holds an unfinished run ({MARKER}, status {status}); nothing was changed. "
                f"Continue it with {self.app} resume={self.path}, or start a new run in another folder "
                "(drop hydra.run.dir= for a fresh one)")
        if mode == "job":
            differ = diff_keys(rec.get("identity"), dict(identity))
            if differ:
                raise ConfigError(
                    f"{self.path} holds a run with other settings (differs in {', '.join(differ[:6])}); "
                    "nothing was changed. Start in a new folder, or restore the old settings")
        return Claim.reuse if status in TERMINAL else Claim.resume

    # ------------------------------------------------------------------ the session
    @contextlib.contextmanager
    def session(self, identity: Mapping[str, Any], mode: str, *, log_file: Optional[str] = None,
                hydra_record: Optional[Mapping[str, str]] = None, wait: bool = False) -> Iterator[Claim]:
        """Claims the folder (see :meth:`decide`), holds its lock while the block runs, and keeps ``run.json``.

        ``log_file`` attaches a file log in the folder for the block; ``hydra_record`` (file name -> text) is
        written under ``.hydra/`` on a fresh claim only, so a refused command leaves Hydra's record of the
        run that made the folder. With ``wait`` a second process waits for the lock instead of being
        refused (jobs that share a cached run). A ``reuse`` claim writes nothing at all.
        """
        claim = self.decide(identity, mode)  # refuse before touching anything
        existed = self.path.exists()
        self._lock(wait)
        try:
            claim = self.decide(identity, mode)  # again, under the lock: another process may have finished it
            if claim == Claim.reuse:
                yield claim
                return
            if not existed:
                self._created.append(self.path)
            self._open(identity, claim, hydra_record)
            if log_file:
                self._attach_log(log_file)
            self._t0 = time.perf_counter()
            try:
                yield claim
            except UserError as exc:
                self._close(exc)
                raise
            except BaseException as exc:  # KeyboardInterrupt, SystemExit, bugs: the run is not finished
                self._close(exc)
                raise
            else:
                self._close(None)
        finally:
            self._detach_log()
            self._unlock()

    def finish(self, **extra: Any) -> None:
        """Marks the run finished (``extra`` is kept in run.json, e.g. where its results are)."""
        self._update(status="finished", finished=_now(), **extra)

    def update(self, **values: Any) -> None:
        """Writes extra entries into run.json (e.g. a paused run's step)."""
        self._update(**values)

    def add_seconds(self, part: str, seconds: float) -> float:
        """Adds ``seconds`` to the run's time for ``part`` (summed over invocations); returns the new total."""
        rec = self.record() or {}
        totals = dict(rec.get("seconds") or {})
        totals[part] = float(totals.get(part, 0.0)) + float(seconds)
        self._update(seconds=totals)
        return totals[part]

    def seconds(self) -> dict[str, float]:
        """Time per part, summed over every invocation so far."""
        rec = self.record() or {}
        return {k: float(v) for k, v in (rec.get("seconds") or {}).items()}

    # ------------------------------------------------------------------ internals
    def _lock(self, wait: bool) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise RunFolderBusy(
                f"{self.path} is in use by another {self.app} run that is still going (it holds {self.path / LOCK}): "
                "wait for it to finish, or start this one in another folder (hydra.run.dir=<new folder>)") from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    def _update(self, **values: Any) -> None:
        rec = self.record() or {}
        rec.update(values)
        write_text_atomic(self.marker, json.dumps(rec, indent=2, allow_nan=False, default=str) + "\n")

    def _open(self, identity: Mapping[str, Any], claim: Claim, hydra_record: Optional[Mapping[str, str]]) -> None:
        invocation = {"started": _now(), "claim": claim.value}
        if claim == Claim.fresh:
            if not self.marker.exists():
                self._created.append(self.marker)
            rec = {"app": self.app, "version": __version__, "identity": dict(identity), "status": "running",
                   "created": _now(), "invocations": [invocation], "seconds": {}}
            write_text_atomic(self.marker, json.dumps(rec, indent=2, allow_nan=False, default=str) + "\n")
            if hydra_record:
                folder = self.path / ".hydra"
                if not folder.exists():
                    self._created.append(folder)
                for name, text in hydra_record.items():
                    write_text_atomic(folder / name, text)
        else:
            rec = self.record() or {}
            self._update(status="running", invocations=list(rec.get("invocations") or []) + [invocation])

    def _close(self, exc: Optional[BaseException]) -> None:
        seconds = time.perf_counter() - self._t0
        if exc is None:
            self._end_invocation("ok", seconds)
            return
        if isinstance(exc, UserError) and not isinstance(exc, TrainingDiverged) and self._produced_nothing():
            self._release()
            return
        if isinstance(exc, TrainingDiverged):
            status = "diverged"  # a result: read back, never trained again
        elif isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "Interrupted":
            status = "interrupted"
        else:
            status = "failed"
        if self.status not in TERMINAL:
            self._update(status=status, error=str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__)
        self._end_invocation(status, seconds)

    def _end_invocation(self, how: str, seconds: float) -> None:
        rec = self.record()
        if rec is None:
            return
        invocations = list(rec.get("invocations") or [])
        if invocations:
            invocations[-1] = {**invocations[-1], "ended": _now(), "how": how, "seconds": round(seconds, 3)}
        self._update(invocations=invocations)

    def _produced_nothing(self) -> bool:
        """True when the folder holds only what the claim wrote (run.json, the lock, .hydra, the log)."""
        own = {MARKER, LOCK, ".hydra"}
        if self._log_path is not None:
            own.add(self._log_path.name)
        rec = self.record() or {}
        if len(rec.get("invocations") or []) > 1:
            return False  # an earlier invocation worked here
        return all(p.name in own for p in self.path.iterdir())

    def _release(self) -> None:
        """Undoes a fresh claim whose run failed before any work, so the folder does not block the next command."""
        self._detach_log()
        if self._log_path is not None and self._log_created:
            self._log_path.unlink(missing_ok=True)
        for p in reversed(self._created):
            if p == self.path:
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if self.path in self._created or not any(p.name != LOCK for p in self.path.iterdir()):
            (self.path / LOCK).unlink(missing_ok=True)  # the lock file the claim made, in a folder left empty
        if self.path in self._created:
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def _attach_log(self, name: str) -> None:
        path = self.path / name
        self._log_path, self._log_created = path, not path.exists()
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(handler)
        self._handler = handler

    def _detach_log(self) -> None:
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()
            self._handler = None


def _ignored_key(key: str) -> bool:
    parts = key.split(".")
    return parts[0] in IGNORED or parts[-1] in IGNORED or key in IGNORED


def check_resume_overrides(overrides: Sequence[str], given: Any, saved: Any) -> None:
    """Refuses command-line overrides that a resumed run cannot apply (its saved config is its identity).

    ``overrides`` are the ``key=value`` strings of the command (Hydra's ``overrides.task``), ``given``
    the config they composed and ``saved`` the run's own. An override of an :data:`IGNORED` key (the device,
    a progress bar, the launcher) follows the new command; one whose key has the same value in both is
    harmless; one that would change the run is an error naming both values.
    """
    bad = []
    for o in overrides:
        key = o.partition("=")[0].lstrip("+~").split("@")[-1]
        if key.startswith("hydra") or _ignored_key(key):
            continue
        new, old = OmegaConf.select(given, key, default=None), OmegaConf.select(saved, key, default=None)
        if _plain(new) != _plain(old):
            shown = _plain(old)
            bad.append(f"{o} (the run has {key}={shown})" if not isinstance(shown, (dict, list)) else o)
    if bad:
        raise ConfigError(
            "resume= continues a saved run with its own settings, so these overrides cannot apply: "
            + "; ".join(bad) + ". Drop them, or start a new run without resume=")


def _plain(v: Any) -> Any:
    if OmegaConf.is_config(v):
        return OmegaConf.to_container(v, resolve=True, enum_to_str=True)
    return v.value if hasattr(v, "value") else v


def resumed_config(run: RunFolder, schema: type, given: Any, overrides: Sequence[str] = (),
                   follow: Sequence[str] = ("device",), pop: Sequence[str] = ()) -> tuple[DictConfig, dict[str, Any]]:
    """The config a ``resume=`` continues with: the folder's own (its run.json identity, typed by ``schema``),
    with the ``follow`` keys (the device, a progress bar, the launcher) taken from the new command. An override
    that would change the run is refused naming both values (:func:`check_resume_overrides`); a folder that
    holds no run of this app is one clear line. ``pop`` takes entries out of the identity before it is typed
    (what is not a config key: a training run's genotype, a comparison's cells); they are returned beside."""
    run.decide({}, "resume")
    ident = dict((run.record() or {})["identity"])
    extras = {k: ident.pop(k) for k in pop if k in ident}
    saved = OmegaConf.merge(OmegaConf.structured(schema), ident)
    check_resume_overrides(overrides, given, saved)
    for key in follow:
        OmegaConf.update(saved, key, OmegaConf.select(given, key, default=None), merge=False)
    return saved, extras
