"""enas-compress: exact pruning kept through retraining, exact cluster counts after centroid fine-tuning,
the stored-size formula, the table/plot/resume of the app, and an export that matches the compressed model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_app, write_tiny_corpus
from torch import nn

from enas_rnn.apps.compress import run_compress
from enas_rnn.runfolder import RunFolder
from enas_rnn.trained import load_trained
from enas_rnn.trainrun import train_lm
from enas_rnn.compress import (
    Variant,
    apply_variant,
    cluster_counts,
    codebooks,
    compressible,
    kmeans_1d,
    magnitude_mask,
    materialize,
    matrix_bits,
    plan_variants,
    retrain_optimizer,
    sparsity,
)
from enas_rnn.errors import ConfigError
from enas_rnn.export import ExportError, load_module
from enas_rnn.genotype import get_named
from enas_rnn.model import build_model

# lr 5: at smoke's lr 20 these 16-unit models end about as good as a uniform guess on the tiny corpus (17 words),
# which fit() refuses as no result (WorseThanChance); at 5 they learn its word frequencies (valid ppl ~15).
TINY = ["experiment=smoke", "train.max_steps=40", "train.lr=5", "device=cpu", "model.emb_size=16",
        "model.hidden_size=16"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny trained runs: nn.LSTM (2 layers) and the ENAS paper cell."""
    base = tmp_path_factory.mktemp("compress_runs")
    root = write_tiny_corpus(base / "tiny")
    out = {"root": root}
    for key, extra in {"nn_lstm": ["model=lstm", "model.num_layers=2"], "enas": ["model=cell", "cell=enas_paper"]}.items():
        train_lm(compose_app("train", [*TINY, f"data.root={root}", *extra]), base / key)
        out[key] = base / key
    return out


def test_magnitude_mask_prunes_exactly_the_smallest() -> None:
    w = torch.tensor([[0.5, -0.1, 0.0], [0.3, -0.3, 2.0]])
    m = magnitude_mask(w, 0.5)
    assert m.tolist() == [[1, 0, 0], [0, 1, 1]]  # three of six; of the tie |0.3| = |-0.3| the earlier is pruned
    big = torch.randn(37, 11)
    for level in (0.1, 0.33, 0.9):
        assert int((magnitude_mask(big, level) == 0).sum()) == round(level * big.numel())


def test_kmeans_1d_linear_init_and_exact_count() -> None:
    v = torch.cat([torch.full((50,), -1.0), torch.full((30,), 0.2), torch.full((20,), 3.0)]) + 1e-3 * torch.randn(100)
    c, a = kmeans_1d(v, 3)
    assert torch.allclose(c, torch.tensor([-1.0, 0.2, 3.0]), atol=1e-2)
    assert torch.bincount(a).tolist() == [50, 30, 20]
    heavy = torch.cat([torch.randn(500) * 0.01, torch.tensor([5.0, -5.0])])  # outliers leave linear-init clusters empty
    c, a = kmeans_1d(heavy, 16)
    assert c.numel() == 16 and torch.bincount(a, minlength=16).min() > 0
    assert kmeans_1d(torch.tensor([1.0, 1.0, 2.0]), 8)[0].numel() == 2  # fewer distinct values than k


def test_stored_bits_formula() -> None:
    # 100 weights, 4 nonzeros at 0, 1, 40, 99: gaps 1, 1, 39, 59 -> with 5-bit indices (span 32) one filler
    # for gap 39 and one for gap 59: 6 entries x (32 + 5) bits = 222 < 3200 dense.
    w = torch.zeros(10, 10)
    w.view(-1)[[0, 1, 40, 99]] = 1.0
    assert matrix_bits(w, None, 5) == 6 * 37
    assert matrix_bits(w, 4, 5) == 6 * (2 + 5) + 4 * 32  # shared: 2-bit cluster ids + the codebook
    assert matrix_bits(torch.ones(10, 10), None, 5) == 3200  # dense is cheaper: counted dense
    assert matrix_bits(torch.ones(10, 10), 16, 5) == 100 * 4 + 16 * 32


@pytest.mark.parametrize("core", ["lstm", "gru", "cell"])
def test_structure_survives_retraining(core: str) -> None:
    cfg = compose_app("train", ["experiment=smoke", f"model={core}", "cell=enas_paper", "model.num_layers=2"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 30, get_named("enas_paper") if core == "cell" else None)
    names = list(compressible(model))
    assert "embedding.weight" in names and "decoder.weight" in names and not any("bias" in n for n in names)
    applied = apply_variant(model, Variant(0.6, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    codebook = model.embedding.parametrizations.weight.original.detach().clone()
    assert codebook.shape == (5,)  # the optimiser sees the centroids, not the weights
    tokens = torch.randint(0, 30, (6, 4))
    for _ in range(5):
        logits, _ = model(tokens, model.init_hidden(4))
        loss = nn.functional.cross_entropy(logits.reshape(-1, 30), tokens.roll(1, 0).reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(model.embedding.parametrizations.weight.original, codebook)  # the centroids trained
    materialize(model)
    # The codebooks were trained; the materialised weights keep the structure:
    assert sparsity(model, names) == pytest.approx(sum(round(0.6 * a.numel) for a in applied.values())
                                                   / sum(a.numel for a in applied.values()))
    assert set(cluster_counts(model, names).values()) == {5}


def test_plan_variants_dedups_and_names() -> None:
    cfg = compose_app("compress", ["run=x", "compress.prune_levels=[0.5,0.5]", "compress.clusters=[16]",
                                   "compress.combined_levels=[0.8]", "compress.combined_clusters=[16]"])
    names = [v.name for v in plan_variants(cfg.compress)]
    assert names == ["retrained", "prune50", "share16", "prune80_share16"]


@pytest.mark.slow
def test_compress_app_on_nn_lstm(runs: dict[str, Path], tmp_path: Path) -> None:
    args = [f"run={runs['nn_lstm']}", "compress.prune_levels=[0.5,0.9]", "compress.clusters=[6]",
            "compress.combined_levels=[0.7]", "compress.combined_clusters=[4]", "retrain.max_steps=12",
            "retrain.eval_every=6", "retrain.eval_batches=5", "retrain.lr=2.0", "device=cpu", "export=prune70_share4"]
    out = tmp_path / "c"
    report = run_compress(compose_app("compress", args), out)
    rows = {r["variant"]: r for r in report["variants"]}
    assert list(rows) == ["retrained", "prune50", "prune90", "share6", "prune70_share4"]
    assert rows["prune90"]["sparsity"] == pytest.approx(0.9, abs=1e-3) and rows["prune90"]["steps"] == 12
    assert rows["share6"]["clusters_found"] == [6] and rows["prune70_share4"]["clusters_found"] == [4]
    assert rows["prune70_share4"]["sparsity"] == pytest.approx(0.7, abs=1e-3)
    o = report["original"]
    assert o["stored_bytes"] == 4 * o["num_params"] == rows["retrained"]["stored_bytes"]
    assert o["stored_bytes"] > rows["prune50"]["stored_bytes"] > rows["prune90"]["stored_bytes"]
    assert rows["share6"]["stored_bytes"] < rows["prune50"]["stored_bytes"]
    md = (out / "compression.md").read_text()
    assert "| prune90" in md and "Stored size" in md and (out / "compression.png").stat().st_size > 1000
    saved = json.loads((out / "compression.json").read_text())
    assert saved["export"]["variant"] == "prune70_share4"
    # The exported module holds the compressed weights (as dense float32) and reproduces the model.
    e = report["export"]
    assert e["max_error"] <= 1e-5
    for key in ("embedding.weight", "layer.cells.0.w_x", "layer.cells.1.w_h"):
        assert e["tensors"][key]["zeros"] >= 0.69 and e["tensors"][key]["distinct_nonzero"] == 4
    compressed = load_trained(out / "variants" / "prune70_share4" / "checkpoints" / "best.pt").original
    mod_path = out / e["module"]
    lm = load_module(mod_path.read_text(), mod_path.stem, mod_path).load(out / e["weights"])
    tokens = torch.randint(0, compressed.vocab_size, (9, 2))
    with torch.no_grad():
        ref, _ = compressed(tokens, compressed.init_hidden(2))
        got, _ = lm(tokens)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    # ... and it loads in a clean interpreter, without enas_rnn.
    script = (f"import sys; sys.path.insert(0, {str(mod_path.parent)!r}); import torch, {mod_path.stem} as m; "
              "lm = m.load(); print(lm(torch.zeros(3, 2, dtype=torch.long))[0].shape); "
              "assert 'enas_rnn' not in sys.modules")
    site = str(Path(torch.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": site}
    res = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr
    # Again in the same folder: the finished compression is read back (nothing retrained, no file changed) ...
    assert run_compress(compose_app("compress", args), out) == json.loads((out / "compression.json").read_text())
    # ... and one interrupted before its table reuses every finished variant.
    RunFolder(out, "enas-compress").update(status="interrupted")
    (out / "compression.json").unlink()
    again = run_compress(compose_app("compress", args), out)
    assert {r["status"] for r in again["variants"]} == {"reused"}
    assert [r["test_ppl"] for r in again["variants"]] == [r["test_ppl"] for r in report["variants"]]
    with pytest.raises(ConfigError, match="differs in retrain.lr"):
        run_compress(compose_app("compress", [*args, "retrain.lr=3.0"]), out)


def test_compress_a_cell_and_export_best(runs: dict[str, Path], tmp_path: Path) -> None:
    args = [f"run={runs['enas']}", "compress.prune_levels=[0.5]", "compress.clusters=[8]", "compress.combined_levels=[]",
            "compress.scope=cores", "retrain.max_steps=6", "retrain.eval_every=6", "retrain.eval_batches=3",
            "retrain.lr=1.0", "device=cpu", "export_tolerance=10", "control=false"]
    report = run_compress(compose_app("compress", args), tmp_path / "c")
    rows = {r["variant"]: r for r in report["variants"]}
    assert list(rows) == ["prune50", "share8"]
    assert all(n.startswith("cores.") for n in rows["share8"]["compressed_matrices"])
    # export=best: the smallest variant within the (here generous) tolerance.
    assert report["export"]["variant"] == min(rows.values(), key=lambda r: r["stored_bytes"])["variant"]
    assert report["export"]["max_error"] <= 1e-5


def test_bad_compress_settings(runs: dict[str, Path], tmp_path: Path) -> None:
    base = [f"run={runs['nn_lstm']}", "device=cpu"]
    with pytest.raises(ConfigError, match="run= is required"):
        run_compress(compose_app("compress", ["device=cpu"]), tmp_path)
    with pytest.raises(ConfigError, match="prune_levels"):
        run_compress(compose_app("compress", [*base, "compress.prune_levels=[1.5]"]), tmp_path)
    with pytest.raises(ConfigError, match="clusters"):
        run_compress(compose_app("compress", [*base, "compress.clusters=[1]"]), tmp_path)
    with pytest.raises(ConfigError, match="scope"):
        run_compress(compose_app("compress", [*base, "compress.scope=embedding"]), tmp_path)


def test_gru_run_compresses_but_is_not_exported(runs: dict[str, Path], tmp_path: Path) -> None:
    train_lm(compose_app("train", [*TINY, f"data.root={runs['root']}", "model=gru"]), tmp_path / "gru")
    with pytest.raises(ExportError, match="nn.GRU"):
        load_trained(tmp_path / "gru" / "checkpoints" / "best.pt")
    args = [f"run={tmp_path / 'gru'}", "compress.prune_levels=[0.5]", "compress.clusters=[]",
            "compress.combined_levels=[]", "retrain.max_steps=4", "retrain.eval_batches=2", "device=cpu", "control=false"]
    report = run_compress(compose_app("compress", args), tmp_path / "c")
    assert report["setup"]["model"] == "nn.GRU" and "export" not in report
    assert report["variants"][0]["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_codebooks_step_at_a_scaled_lr() -> None:
    cfg = compose_app("train", ["experiment=smoke", "model=lstm"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 30)
    apply_variant(model, Variant(0.0, 4), scope="cores")
    opt = retrain_optimizer(model, lr=1.0, weight_decay=0.0, codebook_lr_scale=1e-2)
    books = {id(p) for p in codebooks(model)}
    assert len(books) == 2  # weight_ih and weight_hh of the one nn.LSTM layer
    before = {id(p): p.detach().clone() for p in model.parameters()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    for p in model.parameters():
        step = 1e-2 if id(p) in books else 1.0
        torch.testing.assert_close(p.detach(), before[id(p)] - step)
    assert [g["lr"] for g in opt.param_groups] == [1.0, 1.0]  # the loop's lr is left as it set it
