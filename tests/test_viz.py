"""Drawing genotypes to image files (matplotlib, Agg)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from enas_rnn.genotype import NAMED, get_named
from enas_rnn.spaces import make_space
from enas_rnn.viz import draw_genotype

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_cells_render_to_png(tmp_path, name):
    path = tmp_path / f"{name}.png"
    fig = draw_genotype(get_named(name), path)
    plt.close(fig)
    data = path.read_bytes()
    assert len(data) > 5000 and data.startswith(PNG_MAGIC)


def test_figure_shows_live_nodes_and_outputs():
    fig = draw_genotype(make_space("lstm", 8).pad(get_named("lstm")), title="padded lstm")
    texts = {t.get_text() for t in fig.axes[0].texts}
    plt.close(fig)
    assert {"n1\n× (mul)", "n3\n+ (add)"} <= texts
    assert not any(t.startswith("n5") for t in texts)  # dead nodes are not drawn
    assert {"h$_t$", "c$_t$", "x$_t$, h$_{t-1}$", "c$_{t-1}$"} <= texts  # inputs and outputs


@pytest.mark.slow
def test_random_cells_render(tmp_path):
    for space in ("lstm", "enas"):
        for seed in range(3):
            fig = draw_genotype(make_space(space, 8).sample(seed), tmp_path / f"{space}{seed}.svg")
            plt.close(fig)
            assert (tmp_path / f"{space}{seed}.svg").stat().st_size > 0


@pytest.mark.slow
def test_draw_cell_script(tmp_path):
    out = tmp_path / "enas.png"
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "draw_cell.py"), "enas_paper", "-o", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert res.returncode == 0, res.stderr
    assert out.read_bytes().startswith(PNG_MAGIC)
    path = tmp_path / "cell.json"
    make_space("lstm", 8).sample(3).to_json(path)
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "draw_cell.py"), str(path), "-o", str(tmp_path / "c.png"), "--canonical"],
        capture_output=True, text=True, check=False,
    )
    assert res.returncode == 0, res.stderr
    res = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "draw_cell.py"), "nope", "-o", str(tmp_path / "x.png")],
        capture_output=True, text=True, check=False,
    )
    assert res.returncode == 2 and "enas_paper" in res.stderr
