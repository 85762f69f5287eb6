"""The `enas-mrs` study on the tiny corpus: outputs, correlations, resume, shared-weight ppl."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from conftest import compose_app

import enas_rnn.apps.mrs as study
from enas_rnn.apps.mrs import run_study
from enas_rnn.runfolder import RunFolder
from enas_rnn.searchrun import run_search
from enas_rnn.errors import ConfigError


def study_cfg(root: Path, *extra: str):
    return compose_app("mrs", ["experiment=smoke", f"data.root={root}", "device=cpu", *extra])


def _check_tables(tables: dict, targets: set[str]) -> None:
    assert targets <= set(tables) <= targets | {"valid_ppl_learned"}
    for table in tables.values():
        assert {t["stat"] for t in table} == set(study.stats_of(["paper", "init", "paper_mae", "init_mae"]))
        for t in table:
            for m in ("spearman", "kendall"):
                v, p = t[m], t[f"{m}_p"]
                assert math.isnan(v) or -1.0 <= v <= 1.0
                assert math.isnan(p) or 0.0 <= p <= 1.0
        computed = [t for t in table if not math.isnan(t["spearman"])]
        assert computed, "at least some correlations must be defined"


@pytest.mark.slow
def test_smoke_study_writes_everything_and_resumes(tiny_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "study"
    report = run_study(study_cfg(tiny_corpus), out)
    for name in (study.CSV_NAME, study.PLOT_NAME, study.SUMMARY_NAME):
        assert (out / name).is_file() and (out / name).stat().st_size > 100
    rows = list(csv.DictReader((out / study.CSV_NAME).open()))
    trained = [r for r in rows if r["degenerate"] == "0"]
    dead = [r for r in rows if r["degenerate"] == "1"]
    assert len(trained) == 4 + 1  # 4 non-degenerate cells drawn + the published lstm cell
    assert dead and all(r["valid_ppl"] == "" and r["why"] for r in dead)  # scored, never trained
    assert report["cells"] == len(rows) and len({r["hash"] for r in rows}) == len(rows)
    assert {r["name"] for r in rows} >= {"lstm"}
    assert all(float(r["valid_ppl"]) > 1 for r in trained)
    for v in ("paper", "init", "paper_mae", "init_mae"):
        assert len({r[f"{v}_threshold"] for r in rows}) == 1  # one threshold per variant for the whole population
        assert all(len(r[f"{v}_samples"].split()) == 4 for r in rows)
    assert not list(out.glob("runs/*/checkpoints"))
    assert len(list(out.glob("runs/*"))) == len(trained)
    _check_tables(report["tables"], {"valid_ppl"})
    md = (out / study.SUMMARY_NAME).read_text()
    assert "spearman_p" in md and "kendall" in md and "## Degenerate cells" in md and "0.372" in md

    # Again: the finished study is read back ...
    def boom(*args, **kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(study, "cell_job", boom)
    again = run_study(study_cfg(tiny_corpus), out)
    assert again["cells"] == len(rows)
    # ... and an interrupted one trains no cell that is in the CSV already.
    RunFolder(out, "enas-mrs").update(status="interrupted")
    again = run_study(study_cfg(tiny_corpus), out)
    assert again["cells"] == len(rows)
    assert [r["hash"] for r in csv.DictReader((out / study.CSV_NAME).open())] == [r["hash"] for r in rows]
    # another study's settings in the same folder are refused, not mixed in
    with pytest.raises(ConfigError, match="differs in cells"):
        run_study(study_cfg(tiny_corpus, "cells=5"), out)


@pytest.mark.slow
def test_study_reports_shared_weight_ppl_of_a_search(tiny_corpus: Path, tmp_path: Path) -> None:
    search = tmp_path / "search"
    run_search(compose_app("search", ["experiment=smoke", f"data.root={tiny_corpus}", "train.progress=false",
                                      "search.epochs=1"]), search)
    report = run_study(study_cfg(tiny_corpus, f"search_run={search}", "cells=3", "include_named=false"), tmp_path / "s")
    _check_tables(report["tables"], {"valid_ppl", "shared_ppl"})
    rows = list(csv.DictReader((tmp_path / "s" / study.CSV_NAME).open()))
    assert all(math.isfinite(float(r["shared_ppl"])) for r in rows if r["degenerate"] == "0")
    with pytest.raises(ConfigError, match="space"):
        run_study(study_cfg(tiny_corpus, f"search_run={search}", "space=enas", "cells=2"), tmp_path / "e")


def test_correlations_rank_diverged_cells_last_and_report_the_cells_that_learned() -> None:
    # Five cells: the score ranks them perfectly, and the worst one diverged (inf). Dropping it would lose
    # a pair; ranking it last keeps the perfect order. Two cells are worse than a uniform guess (V = 100).
    rows = [{"hash": str(i), "degenerate": 0, "valid_ppl": ppl, "num_params": 1.0 + i, "hidden_cov": -float(i)}
            for i, ppl in enumerate([50.0, 60.0, 70.0, 500.0, math.inf])]
    tables = study.correlations(rows, ["num_params", "hidden_cov"], uniform_ppl=100.0)
    full = {t["stat"]: t for t in tables["valid_ppl"]}
    assert full["num_params"]["n"] == 5 and full["num_params"]["kendall"] == pytest.approx(1.0)
    assert full["hidden_cov"]["kendall"] == pytest.approx(-1.0)
    learned = {t["stat"]: t for t in tables["valid_ppl_learned"]}
    assert learned["num_params"]["n"] == 3 and learned["num_params"]["spearman"] == pytest.approx(1.0)
