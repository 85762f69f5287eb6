"""Where a stage's independent trainings run: in this process, as parallel local processes, or on SLURM.

``launcher=serial`` runs every job in this process, one after another (the reference). ``launcher=local``
runs up to ``launcher.jobs`` jobs at once as separate processes on this machine, each with
``torch.set_num_threads(cores // jobs)``; ``launcher=slurm`` submits each job to a SLURM cluster with the
partition, GPUs, CPUs and time limit of ``launcher.slurm``. Both are built on submitit
(facebookincubator/submitit: ``LocalExecutor`` and ``SlurmExecutor``), which gives one job object for a
local process and a cluster job - a pickled module-level function and its arguments, its result or its
error with the job's log, and cancellation - and is what Hydra's own submitit launcher uses for
multiruns, so the same engine spreads a pipeline's jobs and a sweep's runs.

A job is a module-level function and plain arguments (a config as a dict, a folder, a genotype as a
dict) that writes into its own run folder, so a finished job is reused and an interrupted one resumes
when it is submitted again; the numbers do not depend on where it ran (every job is seeded by its config
and the loops' results do not depend on the thread count). A job that fails is reported with its
folder and its error line (:class:`JobsFailed`), after the other running jobs have finished.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import submitit
import torch

from enas_rnn import interrupt
from enas_rnn.errors import ConfigError, UserError
from enas_rnn.rules import INT1, OPT_INT1, one_of, rule

__all__ = ["SlurmConfig", "LauncherConfig", "Job", "Handle", "Executor", "JobsFailed", "make_executor",
           "LAUNCHERS", "cpu_count"]

log = logging.getLogger(__name__)

LAUNCHERS = ("serial", "local", "slurm")
_POLL_S = 0.5


@dataclass
class SlurmConfig:
    """What each SLURM job asks for (``launcher=slurm``); submitit writes them into the sbatch script."""

    partition: Optional[str] = None  # None: the cluster's default partition
    gpus_per_job: int = rule(1, (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"))
    cpus_per_job: int = rule(4, INT1)
    time_min: int = rule(240, INT1)  # the job's time limit; a job stopped at it resumes when submitted again
    mem_gb: Optional[int] = rule(None, OPT_INT1)
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    setup: list[str] = field(default_factory=list)  # shell lines run before each job (module load ..., source venv)


@dataclass
class LauncherConfig:
    """Where a stage's independent jobs run: serial (this process), local (parallel processes), slurm."""

    name: str = rule("serial", one_of(LAUNCHERS))
    jobs: Optional[int] = rule(None, OPT_INT1)  # local: processes at once; None: the machine's cores
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, e.g. under taskset or a cluster's cgroup)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class Job:
    """One independent piece of work: ``fn(*args)``, writing into ``folder``; ``fn`` is a module-level function."""

    name: str
    folder: Path
    fn: Callable[..., Any]
    args: tuple = ()


class JobsFailed(UserError):
    """One or more jobs of a stage failed; the message names each job, its folder and its error."""


@dataclass
class Handle:
    """A submitted job: ``done()``, ``result()`` (raises JobsFailed when the job failed)."""

    job: Job
    _value: Any = None
    _error: Optional[str] = None
    _done: bool = False
    _sub: Any = None  # the submitit job, for local and slurm
    _threads: int = 1
    _owner: Any = None  # the Executor that queued it: waiting on a queued job must start it when a slot frees

    def done(self) -> bool:
        if not self._done and self._sub is not None and self._sub.done():
            self._collect()
        return self._done

    def _collect(self) -> None:
        try:
            ok, payload = self._sub.result()
        except Exception as exc:  # the process died (killed, out of memory) before returning
            ok, payload = False, f"the job's process ended without a result ({str(exc).strip().splitlines()[-1][:300]}" \
                                 f"; its log is in {self._sub.paths.folder})"
        self._done = True
        if ok:
            self._value = payload
        else:
            self._error = payload

    def result(self) -> Any:
        while not self.done():
            if interrupt.requested():
                raise KeyboardInterrupt  # the caller cancels the running jobs (they checkpoint)
            if self._owner is not None:
                # A job still in the queue has no process yet: only the executor's poll starts it (as a slot
                # frees). Without this, waiting on it while every slot is busy would wait for ever.
                self._owner.poll()
            time.sleep(_POLL_S)
        if self._error is not None:
            raise JobsFailed(f"job {self.job.name} failed (folder {self.job.folder}): {self._error}")
        return self._value


def _call(fn: Callable[..., Any], args: tuple, threads: int) -> tuple[bool, Any]:
    """What a job process runs: the function with ``threads`` torch threads; an error becomes its one line.

    A cancelled job (SIGINT from :meth:`Executor.cancel`, or a cluster's SIGTERM) stops at its next step
    boundary with a checkpoint, so submitting it again resumes it."""
    torch.set_num_threads(max(1, threads))
    interrupt.install()
    try:
        return True, fn(*args)
    except UserError as exc:
        return False, str(exc)
    except Exception as exc:  # a bug: keep the traceback's last lines for the log
        return False, f"{type(exc).__name__}: {exc} | " + " | ".join(traceback.format_exc().splitlines()[-4:])
    finally:
        interrupt.uninstall()


class Executor:
    """Runs jobs; ``submit`` returns a :class:`Handle`, ``run`` submits a list and waits for every result.

    Serial: ``submit`` runs the job at once in this process (errors propagate as they are). Local and
    SLURM: at most ``capacity`` jobs run at a time; the rest wait in submission order and start as
    slots free up (``poll``, called by ``wait`` and ``run``). Submitting a job that is already queued or
    running returns its handle (one process, one result), and a different job for a folder another job
    is writing starts after that one (a run folder admits one writer).
    """

    def __init__(self, kind: str, capacity: int, threads: int, backend: Any = None) -> None:
        self.kind, self.capacity, self.threads, self.backend = kind, capacity, threads, backend
        self._queue: list[Handle] = []
        self._running: list[Handle] = []

    @property
    def parallel(self) -> bool:
        return self.kind != "serial"

    def submit(self, job: Job) -> Handle:
        handle = Handle(job, _threads=self.threads)
        if not self.parallel:
            handle._value, handle._done = job.fn(*job.args), True
            return handle
        for h in self._queue + self._running:
            if h.job.folder == job.folder and h.job.fn is job.fn and h.job.args == job.args and not h.done():
                return h  # the same job is already queued or running (e.g. a baseline started beside the search)
        handle._owner = self
        self._queue.append(handle)
        self.poll()
        return handle

    def now(self, job: Job) -> Handle:
        """Runs ``job`` in this process at once, whatever the launcher (a job that only reads finished results
        back is not worth a process start)."""
        handle = Handle(job, _threads=self.threads)
        handle._value, handle._done = job.fn(*job.args), True
        return handle

    def poll(self) -> None:
        """Starts waiting jobs while slots are free; collects finished ones."""
        self._running = [h for h in self._running if not h.done()]
        busy = {h.job.folder for h in self._running}
        i = 0
        while i < len(self._queue) and len(self._running) < self.capacity:
            if self._queue[i].job.folder in busy:  # another job writes this folder (its lock): start after it
                i += 1
                continue
            h = self._queue.pop(i)
            busy.add(h.job.folder)
            h.job.folder.mkdir(parents=True, exist_ok=True)
            h._sub = self.backend.submit(_call, h.job.fn, h.job.args, self.threads)
            log.info("started job %s (%s) in %s", h.job.name, self.kind, h.job.folder)
            self._running.append(h)

    def wait(self, handles: Sequence[Handle]) -> list[Any]:
        """Every handle's result, in order; when some failed, JobsFailed after all of them finished."""
        while not all(h.done() for h in handles):
            if interrupt.requested():
                raise KeyboardInterrupt  # the caller cancels the running jobs (they checkpoint)
            self.poll()
            time.sleep(_POLL_S)
        errors = [h for h in handles if h._error is not None]
        if errors:
            raise JobsFailed("; ".join(f"job {h.job.name} failed (folder {h.job.folder}): {h._error}" for h in errors))
        return [h._value for h in handles]

    def run(self, jobs: Sequence[Job]) -> list[Any]:
        """Submits ``jobs`` and returns their results in order."""
        return self.wait([self.submit(j) for j in jobs])

    def cancel(self, grace_s: float = 60.0) -> None:
        """Stops every running job (each checkpoints at its next step boundary on the SIGINT submitit sends),
        waits up to ``grace_s`` for them to end, and drops the waiting ones."""
        self._queue.clear()
        running = [h for h in self._running if h._sub is not None and not h._done]
        for h in running:
            try:
                h._sub.cancel(check=False)
            except Exception:  # noqa: BLE001 - a job that already ended
                pass
        deadline = time.monotonic() + grace_s
        while self.kind == "local" and time.monotonic() < deadline and not all(h._sub.done() for h in running):
            time.sleep(_POLL_S)
        self._running.clear()


def make_executor(cfg: Any, folder: str | Path) -> Executor:
    """The executor a launcher config names; its job logs go to ``<folder>/.submitit``.

    ``local`` runs ``launcher.jobs`` processes (default: this machine's cores), each with cores // jobs
    torch threads; more jobs than cores is allowed with a warning. ``slurm`` needs ``sbatch`` on PATH.
    """
    name = str(cfg.name)
    cores = cpu_count()
    if name == "serial":
        return Executor("serial", 1, torch.get_num_threads())
    logs = Path(folder) / ".submitit"
    if name == "local":
        jobs = int(cfg.jobs) if cfg.get("jobs") is not None else cores
        if jobs > cores:
            log.warning("launcher.jobs=%d is more than this machine's %d cores: the jobs will compete for them", jobs,
                        cores)
        ex = submitit.LocalExecutor(folder=str(logs))
        ex.update_parameters(timeout_min=60 * 24 * 14)  # a local job has no time limit of its own
        return Executor("local", jobs, max(1, cores // jobs), ex)
    if name == "slurm":
        check_slurm()
        s = cfg.slurm
        ex = submitit.SlurmExecutor(folder=str(logs))
        params: dict[str, Any] = {"time": int(s.time_min), "cpus_per_task": int(s.cpus_per_job),
                                  "gpus_per_node": int(s.gpus_per_job), "nodes": 1, "ntasks_per_node": 1}
        for key, value in (("partition", s.partition), ("account", s.account), ("qos", s.qos),
                           ("constraint", s.constraint)):
            if value:
                params[key] = str(value)
        if s.mem_gb:
            params["mem"] = f"{int(s.mem_gb)}GB"
        if s.setup:
            params["setup"] = list(s.setup)
        ex.update_parameters(**params)
        capacity = int(cfg.jobs) if cfg.get("jobs") is not None else 1 << 16  # the cluster queues the rest
        return Executor("slurm", capacity, int(s.cpus_per_job), ex)
    raise ConfigError(f"invalid config value launcher.name={name!r}: valid values are {', '.join(LAUNCHERS)}")


def check_slurm() -> None:
    """``launcher=slurm`` needs SLURM's ``sbatch`` here; one clear line (and nothing started) when it is missing."""
    if shutil.which("sbatch") is None:
        raise ConfigError("launcher=slurm needs SLURM's sbatch, which is not on PATH here: run on a cluster login "
                          "node, or use launcher=local (this machine) or launcher=serial")
