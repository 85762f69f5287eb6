"""The README's export snippet runs as written, and no README or docs page names a path of this machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, compose_app, write_tiny_corpus

from enas_rnn.trained import load_trained
from enas_rnn.trainrun import train_lm
from enas_rnn.export import export_trained
from enas_rnn.spaces import make_space

SNIPPET = re.compile(r"<!-- export-snippet -->\s*```python\n(.*?)```\s*<!-- /export-snippet -->", re.S)
#: What the snippet says in place of the module name enas-export prints.
PLACEHOLDER = "cell_<hash>"
#: Absolute paths of a machine (this one or a user's): a reader cannot run a command that names them.
MACHINE_PATH = re.compile(r"(?<![\w.~:/-])/(?:work|tmp|root|home|Users|mnt|scratch|data|opt|var|srv|private|media)"
                          r"(?=/|\b)")


def export_snippet() -> str:
    found = SNIPPET.findall((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(found) == 1, "README.md needs one ```python block between <!-- export-snippet --> markers"
    return found[0]


def test_the_snippet_documents_its_placeholder() -> None:
    code = export_snippet()
    assert PLACEHOLDER in code and "replace cell_<hash>" in code
    assert "enas_rnn" not in code.replace("enas_rnn is not needed", "")  # the user's side needs torch only


@pytest.mark.slow
def test_the_readme_export_snippet_runs_as_written(tmp_path: Path) -> None:
    # A smoke-trained cell on the tiny corpus, exported into <run>/export as enas-export does.
    root = write_tiny_corpus(tmp_path / "tiny")
    genotype = tmp_path / "cell.json"
    make_space("lstm", 6).sample(13).to_json(genotype)  # an unnamed cell: the module is cell_<hash>
    run = tmp_path / "run"
    train_lm(compose_app("train", ["experiment=smoke", "train.max_steps=30", "train.eval_every=10", "device=cpu",
                                   f"data.root={root}", "model=cell", f"cell={genotype}"]), run)
    res = export_trained(load_trained(run / "checkpoints" / "best.pt"), run / "export")
    assert res.name.startswith("cell_")
    code = export_snippet().replace(PLACEHOLDER, res.name)
    # A fresh interpreter in the run folder, where importing enas_rnn fails: the snippet must not need it.
    guard = "import sys; sys.modules['enas_rnn'] = None\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", guard + code], cwd=run, capture_output=True, text=True,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    h = compose_app("train", ["experiment=smoke"]).model.hidden_size
    assert out.stdout.split("\n")[0] == f"(35, 20, {h}) (1, 20, {h})"


def test_no_machine_paths_in_the_readme_or_docs() -> None:
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    found = [f"{page.relative_to(REPO)}:{i}: {line.strip()[:120]}"
             for page in pages for i, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
             if MACHINE_PATH.search(line)]
    assert not found, ("absolute paths of a machine (write ENAS_RNN_DATA=../shared/data, a command, or a "
                       "placeholder like <run folder>):\n" + "\n".join(found))


def test_the_path_check_sees_what_it_should() -> None:
    for bad in ("see /work/exp_out/speed8", "`--out /tmp/x`", "ENAS_RNN_DATA=/work/shared/data", "(/home/me/ptb)"):
        assert MACHINE_PATH.search(bad), bad
    for ok in ("ENAS_RNN_DATA=../shared/data", "docs/speed.md", "http://www.fit.vutbr.cz/~imikolov/rnnlm",
               "/usr/bin/time", "data/ptb", "github.com/acamero/dlopt", "<!-- /export-snippet -->"):
        assert not MACHINE_PATH.search(ok), ok
