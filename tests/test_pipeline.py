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
import enas_rnn.search as search_mod
from enas_rnn.apps.pipeline import run_pipeline
from enas_rnn.distance import graph_edit_distance
from enas_rnn.errors import ConfigError
from enas_rnn.genotype import Genotype, get_named


def pipe_cfg(root: Path, *extra: str):
    # train.lr=5: at smoke's lr 20 the 10-step shortlist retraining ends about as good as a uniform guess on the tiny
    # corpus, which fit() refuses as no result; at 5 the cells learn at least the word frequencies.
    return compose_app("pipeline", ["experiment=smoke", f"data.root={root}", "train.lr=5", *extra])


@pytest.mark.slow
def test_smoke_pipeline_writes_every_stage_and_is_never_rewritten(tiny_corpus: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    out = tmp_path / "p"
    metrics = run_pipeline(pipe_cfg(tiny_corpus), out)
    for path in ("search/best_genotype.json", "search/derived.json", "select/selection.json", "select/selection.md",
                 "compare/comparison.md", "export/export.json", "summary.md", "metrics.json", "winner.png",
                 "fidelity.png"):
        assert (out / path).is_file(), path
    select = json.loads((out / "select" / "selection.json").read_text())
    assert select["strategy"] == "halving" and [len(r["cells"]) for r in select["rungs"]] == [3, 1]
    winner = Genotype.from_dict(select["winner_genotype"])
    assert metrics["winner"] == winner.hash() == select["winner"] and not winner.is_degenerate()
    # the winner's comparison run at the configured size continued its selection run
    same = json.loads((out / "compare" / "comparison.json").read_text())
    (row,) = [r for r in same["runs"] if r["model"] == f"cell_{winner.hash()}" and r["sizing"] == "same"]
    assert row["status"] == "resumed" and row["run_dir"].endswith(select["winner_run"])
    summary = (out / "summary.md").read_text()
    assert "**Verdict:** untested" in summary and "nn.LSTM" in summary and "![winner](winner.png)" in summary
    assert "Ranking fidelity" in summary and "| supernet |" in summary
    assert f"edit distance to lstm: {graph_edit_distance(winner, get_named('lstm')).value}" in summary
    text = (out / "metrics.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert set(metrics["fidelity"]) >= {"supernet", "rung0"}
    module = Path(metrics["export"]["module"])
    assert module.is_file() and "enas-pipeline" in module.read_text()
    # the run the verdict is about: the matched one, or the same-size run when the sizes coincide (one run)
    (matched,) = [r for r in same["runs"] if r["model"] == f"cell_{winner.hash()}" and r["sizing"] == "matched"
                  and r["seed"] == 0]
    alias = matched["status"].removeprefix("same run as ") if matched["status"].startswith("same run as ") else None
    assert metrics["export"]["run"] == (alias or f"cell_{winner.hash()}_matched_seed0")

    # A second identical command is refused and changes no file; resume= finds every stage done, redoes none.
    before = {str(p): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    with pytest.raises(ConfigError, match="already holds a finished run"):
        run_pipeline(pipe_cfg(tiny_corpus), out)

    def boom(*args, **kwargs):
        raise AssertionError("a finished stage was run again")

    for name in ("run_compare", "select_cells", "export_trained"):
        monkeypatch.setattr(pipeline_mod, name, boom)
    again = run_pipeline(pipe_cfg(tiny_corpus, f"resume={out}"), tmp_path / "ignored")
    assert again == metrics
    assert {str(p): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    with pytest.raises(ConfigError, match="differs in seed"):
        run_pipeline(pipe_cfg(tiny_corpus, "seed=5"), out, mode="job")


@pytest.mark.slow
def test_an_interrupted_pipeline_continues_where_it_stopped(tiny_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "p"
    real = pipeline_mod.run_compare

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_mod, "run_compare", crash)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(pipe_cfg(tiny_corpus), out)
    assert (out / "select" / "selection.json").is_file() and not (out / "compare" / "comparison.json").exists()
    stamp = (out / "search" / "metrics.json").stat().st_mtime
    first = json.loads((out / "run.json").read_text())["seconds"]
    monkeypatch.setattr(pipeline_mod, "run_compare", real)
    time.sleep(0.01)
    metrics = run_pipeline(pipe_cfg(tiny_corpus, f"resume={out}"), tmp_path / "x")
    assert (out / "summary.md").is_file() and (out / "search" / "metrics.json").stat().st_mtime == stamp
    # stage times add up over invocations: the search's from the first, the comparison's from both
    assert metrics["stage_seconds"]["search"] >= first["search"] > 0
    assert metrics["stage_seconds"]["compare"] >= first["compare"]


@pytest.mark.slow
def test_a_pipeline_killed_before_the_searchs_first_checkpoint_resumes(tiny_corpus: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    out = tmp_path / "p"
    real = search_mod.SearchRun.shared_phase

    def die(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(search_mod.SearchRun, "shared_phase", die)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(pipe_cfg(tiny_corpus), out)
    assert not (out / "search" / "checkpoints").exists()
    monkeypatch.setattr(search_mod.SearchRun, "shared_phase", real)
    metrics = run_pipeline(pipe_cfg(tiny_corpus, f"resume={out}"), tmp_path / "x")
    assert metrics["winner"] and (out / "summary.md").is_file()


@pytest.mark.slow
def test_search_from_reuses_a_finished_search(tiny_corpus: Path, tmp_path: Path) -> None:
    first = run_pipeline(pipe_cfg(tiny_corpus), tmp_path / "a")
    second = run_pipeline(pipe_cfg(tiny_corpus, f"search_from={tmp_path / 'a'}", "select.strategy=topk",
                                   "select.k=2", "select.max_steps=5"), tmp_path / "b")
    assert json.loads((tmp_path / "b" / "search" / "metrics.json").read_text()) == first["search"]
    assert second["select"]["strategy"] == "topk" and second["search_from"].endswith("a/search")


@pytest.mark.slow
def test_cli_smoke_pipeline_on_real_ptb(ptb_root: Path, tmp_path: Path) -> None:
    """`enas-pipeline experiment=smoke` as a user runs it, on real PTB (CI runs it)."""
    res = subprocess.run([sys.executable, "-m", "enas_rnn.cli.pipeline", "experiment=smoke", f"data.root={ptb_root}",
                          f"hydra.run.dir={tmp_path / 'p'}"], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    final = json.loads(res.stdout.strip().splitlines()[-1])
    assert final["run_dir"] == str(tmp_path / "p") and "nn.LSTM" in final["verdict"]["text"]
    log = (tmp_path / "p" / "pipeline.log").read_text()
    assert "select: rung 0 (5 steps)" in log and "select: rung 1 (15 steps)" in log


@pytest.mark.slow
def test_local_launcher_gives_the_serial_pipeline(tiny_corpus: Path, tmp_path: Path) -> None:
    """launcher=local runs the stages' jobs as processes: the same metrics to the last digit, the same winner."""
    serial = run_pipeline(pipe_cfg(tiny_corpus), tmp_path / "serial")
    local = run_pipeline(pipe_cfg(tiny_corpus, "launcher=local", "launcher.jobs=2"), tmp_path / "local")
    assert local["winner"] == serial["winner"] and local["verdict"]["text"] == serial["verdict"]["text"]
    for a, b in zip(serial["compare_summary"], local["compare_summary"]):
        assert (a["model"], a["sizing"], a["valid_ppl_mean"], a["test_ppl_mean"]) == \
            (b["model"], b["sizing"], b["valid_ppl_mean"], b["test_ppl_mean"])
    assert serial["select"]["rungs"] == local["select"]["rungs"]


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
