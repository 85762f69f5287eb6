"""What every entry point shares: `--version`, the checks before Hydra starts, friendly errors, the run folder.

Each app is ``main()`` = :func:`start` + the app's ``@hydra.main`` function, which runs its body inside
:func:`friendly_errors`. :func:`start` does everything that can refuse a command before Hydra creates a
folder: unknown keys (also when added with ``+``), a preset the app does not have, a ``resume=`` folder
that does not exist, the config's composition (Hydra's own errors, e.g. ``space=foo``), every value
(``enas_rnn.conf.validate``) and the device - each a one-line message and exit status 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import sys
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Iterator, Sequence

from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from enas_rnn import __version__, interrupt
from enas_rnn.conf import APP_SCHEMAS, CONFIG_MODULE, check_preset, register_configs, validate
from enas_rnn.errors import ConfigError, UserError
from enas_rnn.launch import check_slurm
from enas_rnn.rules import dataclass_of
from enas_rnn.runs import check_device, strict

# Hydra reads the configs from the package enas_rnn.configs (conf/ in the source tree, package data in a
# wheel), so an installed enas_rnn runs from any directory.
CONF_PATH = f"pkg://{CONFIG_MODULE}"

log = logging.getLogger("enas_rnn")

#: The apps, in the order `python -m enas_rnn` lists them: (command, module, one line).
APPS: tuple[tuple[str, str, str], ...] = (
    ("enas-pipeline", "enas_rnn.cli.pipeline", "the whole job: search -> selection (successive halving) -> compare with nn.LSTM -> export"),
    ("enas-search", "enas_rnn.cli.search", "ENAS or random search with weight sharing on PTB; derive the best cells"),
    ("enas-train", "enas_rnn.cli.train", "train one language model (nn.LSTM or a cell) from scratch"),
    ("enas-compare", "enas_rnn.cli.compare", "retrain cells and nn.LSTM under one budget: same size and parameter-matched"),
    ("enas-export", "enas_rnn.cli.export", "a trained cell as a standalone PyTorch module + safetensors"),
    ("enas-mrs", "enas_rnn.cli.mrs", "do training-free scores (MRS, hidden covariance) predict trained perplexity?"),
    ("enas-sweep", "enas_rnn.cli.sweep", "synthetic tasks (nth-element recall, sine) for any core, swept with Hydra multirun"),
    ("enas-summary", "enas_rnn.cli.summary", "one table and heatmaps (or line charts, or mean ± sd) for any multirun"),
    ("enas-compress", "enas_rnn.cli.compress", "pruning and k-means weight sharing of a trained run, retrained and exported"),
)

register_configs()


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name) for f in dataclasses.fields(cls)}


def _groups() -> set[str]:
    root = resources.files(CONFIG_MODULE)
    return {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("__")}


def unknown_key(schema: type, overrides: Sequence[str]) -> str | None:
    """A message for the first override whose key is not in the schema (``+key=`` included), listing the valid keys.

    Group choices (``model=lstm``, whose options Hydra lists itself), deletions (``~key``) and ``hydra.*``
    keys are left to Hydra.
    """
    groups = _groups()
    for o in overrides:
        key = o.partition("=")[0]
        plus = key.startswith("+")
        key = key.lstrip("+")
        if "=" not in o or key.startswith(("hydra", "~")) or "@" in key or ("." not in key and key in groups):
            continue
        cls, path = schema, []
        for part in key.split("."):
            fields = _fields(cls)
            if part not in fields:
                where = f"'{'.'.join(path)}'" if path else "the top level"
                hint = " (a '+' does not add keys to enas_rnn's configs)" if plus else ""
                return (f"unknown config key '{key}'{hint}: {where} has no key '{part}'; valid keys there: "
                        f"{', '.join(sorted(fields))}")
            path.append(part)
            nxt = dataclass_of(fields[part])
            if nxt is None:
                break
            cls = nxt
    return None


def _one_line(exc: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages as one line (their advice about HYDRA_FULL_ERROR dropped)."""
    text = str(exc)
    text = re.sub(r"\s*Set the environment variable HYDRA_FULL_ERROR=1.*", "", text, flags=re.S)
    text = re.sub(r"\s*full_key:.*", "", text, flags=re.S)
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    return "; ".join(parts) or type(exc).__name__


def _first_of_sweeps(overrides: Sequence[str]) -> list[str]:
    """The overrides with each sweep (``seed=0,1``, ``range(...)``) replaced by its first value, for the pre-check."""
    out = []
    parser = OverridesParser.create()
    for o in overrides:
        try:
            parsed = parser.parse_overrides([o])[0]
        except Exception:  # noqa: BLE001 - a malformed override: compose reports it
            out.append(o)
            continue
        if parsed.is_sweep_override():
            first = next(iter(parsed.sweep_string_iterator()), None)
            if first is None:
                continue
            out.append(f"{parsed.get_key_element()}={first}")
        else:
            out.append(o)
    return out


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def start(app: str, argv: Sequence[str] | None = None) -> None:
    """Runs before Hydra: ``--version``, then every check that can refuse the command (see the module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--version" in args or "-V" in args:
        print(f"enas_rnn {__version__}")
        sys.exit(0)
    if any(a in ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--shell-completion") or
           a.startswith(("--cfg", "--info")) for a in args):
        return  # Hydra's own flags: nothing runs
    schema, config_name = APP_SCHEMAS[app]
    overrides = [a for a in args if not a.startswith("-")]
    problem = unknown_key(schema, overrides)
    if problem:
        _fail(problem)
    values = {o.partition("=")[0].lstrip("+"): o.partition("=")[2] for o in overrides if "=" in o}
    try:
        if "experiment" in values:
            check_preset(app, values["experiment"] or None)
        resume = values.get("resume")
        if resume and "," not in resume and not Path(resume).is_dir():
            raise ConfigError(f"resume={resume}: no such folder; pass the folder of an earlier {app} run")
    except UserError as exc:
        _fail(str(exc))
    multirun = "-m" in args or "--multirun" in args
    checked = _first_of_sweeps(overrides) if multirun else overrides
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=checked)
    except Exception as exc:  # noqa: BLE001 - every composition error is the user's (a group option, a type)
        _fail(_one_line(exc))
        return
    try:
        if not cfg.get("resume"):  # a resumed run's values are its own; the new command's are checked against them
            validate(cfg, app, checked)
        if "device" in cfg:
            check_device(str(cfg.device))
        if cfg.get("launcher") is not None and cfg.launcher.name == "slurm":
            check_slurm()
    except UserError as exc:
        _fail(str(exc))


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    """Prints a user error as one readable line (no traceback) and exits with status 2.

    Errors a user can fix (missing data, bad genotype files, invalid config values, corrupt or
    missing checkpoints, a busy run folder) subclass UserError; the message names the fix. An
    interrupt (Ctrl-C, or SIGTERM at a cluster's time limit) ends with the resume hint and status 130.
    """
    interrupt.install()  # SIGTERM / SIGINT: stop at the next step boundary with a checkpoint
    try:
        yield
    except interrupt.Interrupted as exc:
        by = exc.signal_name or interrupt.requested_by()
        log.warning("%s", exc.with_folder(_folder_or_placeholder()))
        print(f"error: {exc.with_folder(_folder_or_placeholder())}", file=sys.stderr)
        sys.exit(143 if by == "SIGTERM" else 130)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"error: interrupted; the last checkpoint is kept; continue with resume={_folder_or_placeholder()}",
              file=sys.stderr)
        sys.exit(143 if interrupt.requested_by() == "SIGTERM" else 130)
    finally:
        interrupt.uninstall()


def _folder_or_placeholder() -> str:
    try:
        return str(run_dir())
    except Exception:  # noqa: BLE001 - outside a Hydra app
        return "<this run's folder>"


def run_dir() -> Path:
    """The Hydra run (or multirun job) folder of the current app."""
    return Path(HydraConfig.get().runtime.output_dir)


def cli_overrides() -> list[str]:
    """The ``key=value`` overrides of the command line (what a resumed run must agree with)."""
    return list(HydraConfig.get().overrides.task)


def is_multirun() -> bool:
    return HydraConfig.get().mode == RunMode.MULTIRUN


def claim_mode(cfg: DictConfig) -> str:
    """How the app claims its folder: ``resume`` with resume=, ``job`` for a multirun job asked to resume its
    sweep (finished jobs are reused), else ``new``."""
    if cfg.get("resume"):
        return "job" if is_multirun() else "resume"
    return "new"


def log_name() -> str:
    """The app's log file in its run folder: <app>.log (train.log, search.log, ...)."""
    return f"{HydraConfig.get().job.name}.log"


def hydra_record(cfg: DictConfig) -> dict[str, str]:
    """Hydra's record of the command (what .hydra/ holds when Hydra writes it), written once the folder is
    claimed: config.yaml (the composed config), hydra.yaml and overrides.yaml (what enas-summary reads)."""
    hc = HydraConfig.get()
    return {"config.yaml": OmegaConf.to_yaml(cfg), "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hc})),
            "overrides.yaml": OmegaConf.to_yaml(OmegaConf.create(list(hc.overrides.task)))}


def final_line(summary: dict[str, Any]) -> None:
    """The app's last line on stdout: one JSON object naming its results and folder."""
    print(json.dumps(strict(summary)))


__all__ = ["CONF_PATH", "APPS", "start", "friendly_errors", "run_dir", "cli_overrides", "claim_mode", "log_name",
           "hydra_record", "final_line", "unknown_key", "is_multirun", "log"]
