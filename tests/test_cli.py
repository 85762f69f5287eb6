"""What a Hydra user expects from each app: help, version, logs in the run folder, multirun folder names."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from enas_rnn import __version__

APPS = ("train", "search", "compare", "export", "mrs", "pipeline", "sweep", "compress")


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env)


@pytest.mark.slow
def test_python_m_enas_rnn_lists_the_apps() -> None:
    res = run("-m", "enas_rnn")
    assert res.returncode == 0, res.stderr
    for app in APPS:
        assert f"enas-{app}" in res.stdout
    assert __version__ in res.stdout


@pytest.mark.slow
@pytest.mark.parametrize("app", APPS)
def test_help_says_what_the_app_does_and_version_is_ours(app: str) -> None:
    res = run("-m", f"enas_rnn.cli.{app}", "--help")
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert f"enas-{app} - " in text and "== Main options" in text and "== Examples ==" in text
    assert "powered by Hydra" not in text and "search_experiment" not in text and "mrs_experiment" not in text
    version = run("-m", f"enas_rnn.cli.{app}", "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"enas_rnn {__version__}"


@pytest.mark.slow
def test_logs_are_lines_in_the_run_folder_and_multirun_folders_are_named(tiny_corpus: Path, tmp_path: Path) -> None:
    res = run("-m", "enas_rnn.cli.train", "-m", "experiment=smoke", "seed=0,1", "train.eval_every=20",
              f"data.root={tiny_corpus}", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert res.returncode == 0, res.stderr[-2000:]
    finals = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert {f["seed"] for f in finals} == {0, 1}
    for f in finals:
        folder = Path(f["run_dir"])
        assert folder.name == f"experiment=smoke,seed={f['seed']},train.eval_every=20" and (folder / "metrics.json").is_file()
        log = (folder / "train.log").read_text()
        assert "enas-train in" in log and "valid ppl" in log and "done:" in log
        assert "\r" not in log  # no progress-bar frames in a file
    # search logs one line per epoch
    res = run("-m", "enas_rnn.cli.search", "experiment=smoke", f"data.root={tiny_corpus}",
              f"hydra.run.dir={tmp_path / 's'}")
    assert res.returncode == 0, res.stderr[-2000:]
    log = (tmp_path / "s" / "search.log").read_text()
    assert log.count("epoch 1/2:") == 1 and log.count("epoch 2/2:") == 1 and "done: best cell" in log
    assert re.search(r"shared train ppl median [0-9.e+]+, \d+ of \d+ windows worse than a uniform guess", log)


@pytest.mark.slow
def test_tensorboard_shows_train_and_search_runs_side_by_side(tiny_corpus: Path, tmp_path: Path) -> None:
    """Readable run names, the cell as formulas, few hparams, and no experiment summary that would hide
    one app's metrics when one TensorBoard reads train and search runs together."""
    from conftest import compose_app
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata

    from enas_rnn.searchrun import run_search
    from enas_rnn.trainrun import train_lm

    train_lm(compose_app("train", ["experiment=smoke", f"data.root={tiny_corpus}", "model=cell", "cell=lstm"]),
             tmp_path / "t")
    run_search(compose_app("search", ["experiment=smoke", f"data.root={tiny_corpus}", "search.epochs=1"]), tmp_path / "s")
    mux = EventMultiplexer().AddRunsFromDirectory(str(tmp_path))
    mux.Reload()
    runs = mux.Runs()
    assert any(r.endswith("tb/train-f0849106a2f8-h32-seed0") for r in runs)
    assert any(r.endswith("tb/search-lstm-enas-seed0") for r in runs)
    for run, tags in runs.items():
        plugin = mux.PluginRunToTagToContent(metadata.PLUGIN_NAME).get(run, {})
        assert metadata.EXPERIMENT_TAG not in plugin, run
        if metadata.SESSION_START_INFO_TAG in plugin:
            info = metadata.parse_session_start_info_plugin_data(plugin[metadata.SESSION_START_INFO_TAG])
            assert 5 <= len(info.hparams) <= 12, sorted(info.hparams)
    search_run = next(r for r in runs if r.endswith("search-lstm-enas-seed0"))
    assert "controller/child_valid_log_ppl" in runs[search_run]["scalars"]
    texts = [t for r in runs for t in runs[r].get("tensors", [])]
    assert "cell/text_summary" in texts and "search/epoch_best_cell_formulas/text_summary" in texts
