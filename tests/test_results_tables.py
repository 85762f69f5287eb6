"""The README's study tables come from the metrics.json files under docs/results/, and those files name no
path of the machine they were made on (scripts/collect_results.py, scripts/pipeline_table.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO

RESULTS = REPO / "docs" / "results"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _pipeline_records() -> list[Path]:
    return sorted(p for p in RESULTS.rglob("metrics.json") if "verdict" in json.loads(p.read_text()))


def test_collect_results_keeps_the_numbers_and_drops_machine_paths(tmp_path: Path) -> None:
    records = _pipeline_records()
    if not records:
        pytest.skip("no pipeline record under docs/results")
    run = tmp_path / "machine" / "runs" / "P0"
    run.mkdir(parents=True)
    record = json.loads(records[0].read_text())
    record["paths"] = {"inside": str(run / "export" / "cell.py"), "data": "/some/where/data/ptb",
                       "dotted": str(run / "compare" / ".." / "runs" / "x" / "best.pt"), "text": "not a path"}
    (run / "metrics.json").write_text(json.dumps(record))
    assert _script("collect_results").main(["--out", str(tmp_path / "out"), str(run)]) == 0
    got = json.loads((tmp_path / "out" / "P0" / "metrics.json").read_text())
    assert got["paths"] == {"inside": "<run>/export/cell.py", "data": "<elsewhere>/ptb",
                            "dotted": "<run>/runs/x/best.pt", "text": "not a path"}
    assert got["verdict"] == record["verdict"]
    assert str(tmp_path) not in (tmp_path / "out" / "P0" / "metrics.json").read_text()


def test_no_record_under_docs_results_names_a_local_path() -> None:
    for path in RESULTS.rglob("*.json"):
        text = path.read_text()
        for root in ("/work/", "/tmp/", "/home/", "/root/", "/Users/"):
            assert root not in text, f"{path.relative_to(REPO)} names a local path ({root}...)"


def test_pipeline_table_has_a_row_per_record_with_its_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    records = _pipeline_records()
    if not records:
        pytest.skip("no pipeline record under docs/results")
    assert _script("pipeline_table").main([str(RESULTS), "--arms"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.split("\n\n")[0].splitlines()[2:] if line.startswith("|")]
    assert len(table) == len(records)
    for path in records:
        v = json.loads(path.read_text())["verdict"]
        if v.get("cell_test_ppl") is not None:
            assert f"{v['cell_test_ppl']:.1f}" in out
