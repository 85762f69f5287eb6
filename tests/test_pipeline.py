"""enas-pipeline end to end: every stage, the summary and verdict, resume without redoing, the shortlist."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, compose_app

import enas_rnn.apps.pipeline as pipeline_mod
from enas_rnn.apps.pipeline import run_pipeline
from enas_rnn.distance import graph_edit_distance
from enas_rnn.errors import ConfigError
from enas_rnn.genotype import Genotype, get_named


def pipe_cfg(root: Path, *extra: str):
    # train.lr=5: at smoke's lr 20 the 10-step shortlist retraining ends about as good as a uniform guess on the tiny
    # corpus, which fit() refuses as no result; at 5 the cells learn at least the word frequencies.
    return compose_app("pipeline", ["experiment=smoke", f"data.root={root}", "train.lr=5", *extra])


def test_smoke_pipeline_writes_every_stage_and_resumes(tiny_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "p"
    metrics = run_pipeline(pipe_cfg(tiny_corpus), out)
    for path in ("search/best_genotype.json", "select/shortlist.json", "select/shortlist.md", "compare/comparison.md",
                 "export/export.json", "summary.md", "metrics.json", "winner.png"):
        assert (out / path).is_file(), path
    select = json.loads((out / "select" / "shortlist.json").read_text())
    finite = [r for r in select["rows"] if r["valid_ppl"] is not None]
    chosen = [r for r in select["rows"] if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["valid_ppl"] == min(r["valid_ppl"] for r in finite)  # chosen by retraining
    assert len(select["rows"]) == 2 and all(not r["degenerate"] for r in select["rows"])
    winner = Genotype.from_json(out / select["winner_cell"])
    assert metrics["winner"] == winner.hash() and not winner.is_degenerate()
    summary = (out / "summary.md").read_text()
    assert "**Verdict:**" in summary and "nn.LSTM" in summary and "![winner](winner.png)" in summary
    assert f"edit distance to lstm: {graph_edit_distance(winner, get_named('lstm')).value}" in summary
    text = (out / "metrics.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    module = Path(metrics["export"]["module"])
    assert module.is_file() and "enas-pipeline" in module.read_text()

    # A second invocation finds every stage done and redoes none of them.
    def boom(*args, **kwargs):
        raise AssertionError("a finished stage was run again")

    for name in ("run_search", "run_compare", "run_one", "export_trained"):
        monkeypatch.setattr(pipeline_mod, name, boom)
    again = run_pipeline(pipe_cfg(tiny_corpus, f"resume={out}"), tmp_path / "ignored")
    assert again["winner"] == metrics["winner"]
    with pytest.raises(ConfigError, match="another pipeline"):
        run_pipeline(pipe_cfg(tiny_corpus, "seed=5"), out)


def test_an_interrupted_pipeline_continues_where_it_stopped(tiny_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "p"
    real = pipeline_mod.run_compare

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_mod, "run_compare", crash)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(pipe_cfg(tiny_corpus), out)
    assert (out / "select" / "shortlist.json").is_file() and not (out / "compare" / "comparison.json").exists()
    stamp = (out / "search" / "metrics.json").stat().st_mtime
    monkeypatch.setattr(pipeline_mod, "run_compare", real)
    time.sleep(0.01)
    run_pipeline(pipe_cfg(tiny_corpus, f"resume={out}"), tmp_path / "x")
    assert (out / "summary.md").is_file() and (out / "search" / "metrics.json").stat().st_mtime == stamp


def test_cli_smoke_pipeline_on_real_ptb(ptb_root: Path, tmp_path: Path) -> None:
    """`enas-pipeline experiment=smoke` as a user runs it, on real PTB (CI runs it): under a minute."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "enas_rnn.cli.pipeline", "experiment=smoke", f"data.root={ptb_root}",
                          f"hydra.run.dir={tmp_path / 'p'}"], cwd=REPO, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    final = json.loads(res.stdout.strip().splitlines()[-1])
    assert final["run_dir"] == str(tmp_path / "p") and "nn.LSTM" in final["verdict"]["text"]
    assert (tmp_path / "p" / "pipeline.log").read_text().count("select: retraining shortlisted cell") == 2
    print(f"pipeline smoke on PTB: {time.perf_counter() - t0:.1f} s")


def _lstm_with(**changes) -> Genotype:
    d = get_named("lstm").to_dict()
    d.pop("name")
    d.pop("source")
    for (node, slot), act in changes.get("acts", {}).items():
        d["nodes"][node]["inputs"][slot][1] = act
    for node, op in changes.get("ops", {}).items():
        d["nodes"][node]["op"] = op
    return Genotype.from_dict(d)


def test_graph_edit_distance_counts_unit_edits() -> None:
    lstm = get_named("lstm")
    assert graph_edit_distance(lstm, lstm).value == 0
    one = _lstm_with(acts={(3, 0): "relu"})  # h_t = relu(c_t) * o instead of tanh(c_t) * o
    assert graph_edit_distance(lstm, one).value == graph_edit_distance(one, lstm).value == 1
    two = _lstm_with(acts={(3, 0): "relu"}, ops={2: "mul"})
    assert graph_edit_distance(lstm, two).value == 2
    # spelling does not matter: the canonical forms are compared
    swapped = get_named("lstm").to_dict()
    for node in swapped["nodes"]:
        node["inputs"].reverse()
    assert graph_edit_distance(lstm, Genotype.from_dict(swapped)).value == 0
    with pytest.raises(ValueError, match="different spaces"):
        graph_edit_distance(lstm, get_named("enas_paper"))
