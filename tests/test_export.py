"""enas-export: the generated module computes what FixedCell computes, stands alone, matches nn.LSTM for the
lstm genotype, compiles and exports, and bad inputs get one readable message."""

from __future__ import annotations

import ast
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("enas_rnn.cells")

from conftest import REPO, compose_app, write_tiny_corpus  # noqa: E402

from enas_rnn.trained import load_trained, resolve_run  # noqa: E402
from enas_rnn.trainrun import train_lm  # noqa: E402
from enas_rnn.cells import FixedCell  # noqa: E402
from enas_rnn.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from enas_rnn.errors import CheckpointError  # noqa: E402
from enas_rnn.export import (  # noqa: E402
    ExportError,
    export_trained,
    generate_source,
    load_module,
    measured_perplexity,
)
from enas_rnn.genotype import Genotype, GenotypeError, get_named  # noqa: E402
from enas_rnn.spaces import make_space  # noqa: E402
from enas_rnn.spaces.lstm import copy_from_nn_lstm  # noqa: E402

# lr 5: at smoke's lr 20 these 16-unit models oscillate around a uniform guess on the tiny corpus (17 words), which
# fit() refuses as no result; at 5 they learn its word frequencies (valid ppl ~15) within the budget.
TINY = ["experiment=smoke", "train.max_steps=12", "train.eval_every=6", "train.lr=5", "device=cpu",
        "model.emb_size=16", "model.hidden_size=16"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three tiny trained runs: the ENAS paper cell (2 layers, tied), nn.LSTM (2 layers), a sampled lstm-space cell."""
    base = tmp_path_factory.mktemp("runs")
    root = write_tiny_corpus(base / "tiny")
    sampled = base / "sampled.json"
    make_space("lstm", 6).sample(13).to_json(sampled)  # 5 live nodes, 4 xh operands, reads c
    specs = {
        "enas": ["model=cell", "cell=enas_paper", "model.num_layers=2", "model.tie_weights=true"],
        "nn_lstm": ["model=lstm", "model.num_layers=2"],
        "sampled": ["model=cell", f"cell={sampled}"],
    }
    out = {}
    for key, extra in specs.items():
        train_lm(compose_app("train", [*TINY, f"data.root={root}", *extra]), base / key)
        out[key] = base / key
    out["sampled_genotype"] = sampled
    return out


def _stack(cores: Any, x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The trained cores as the language model runs them; states [L, B, H]."""
    hs, cs = [], []
    for layer, core in enumerate(cores):
        if hasattr(core, "lstm"):
            x, (h, c) = core(x, (h0[layer : layer + 1], c0[layer : layer + 1]))
            h, c = h[0], c[0]
        else:
            x, (h, c) = core(x, (h0[layer], c0[layer]))
        hs.append(h)
        cs.append(c)
    return x, torch.stack(hs), torch.stack(cs)


def _sampled(space: str, n: int) -> list[Genotype]:
    sp = make_space(space, 5)
    return [sp.sample(seed) for seed in range(n)]


TOL = 16 * torch.finfo(torch.float32).eps  # about 1.9e-6, relative and absolute


@pytest.mark.parametrize("space", ["lstm", "enas"])
def test_generated_code_computes_what_fixedcell_computes(space: str) -> None:
    # Random genotypes (dead nodes, repeated operands, cells that never read h) under three guards: the
    # interval analysis that drops no-op clamps depends on the clip value.
    for k, g in enumerate(_sampled(space, 8)):
        for clip in (25.0, 0.5, None):
            torch.manual_seed(k)
            cells = [FixedCell(g, 5, 6, state_clip=clip, init_range=0.6), FixedCell(g, 6, 6, state_clip=clip, init_range=0.6)]
            mod = load_module(generate_source(g, clip, "m"), "m")
            layer = mod.Layer(5, 6, num_layers=2, batch_first=True)
            for cell, exported in zip(cells, layer.cells):
                exported.load_state_dict(cell.state_dict())
            x = 2 * torch.randn(7, 3, 5)
            h0, c0 = torch.randn(2, 3, 6), 30 * torch.randn(2, 3, 6)  # c0 beyond the clip: the guard acts
            with torch.no_grad():
                ref = _stack(cells, x, h0, c0)
                out, (h, c) = layer(x.transpose(0, 1), (h0, c0))
            for a, b in zip(ref, (out.transpose(0, 1), h, c)):
                # Both sum the same float32 products per step in another order (one GEMM each over E + H <= 12
                # inputs): a few ulps of the value, so tolerances in eps; no guard: some cells overflow (nan).
                torch.testing.assert_close(b, a, atol=TOL, rtol=TOL, equal_nan=True)
            with torch.no_grad():  # the one-step Cell is the same step
                h1, (_, c1) = layer.cells[0](x[0], (h0[0], c0[0]))
                ref1 = cells[0](x[:1], (h0[0], c0[0]))
            torch.testing.assert_close(h1, ref1[0][0], atol=TOL, rtol=TOL, equal_nan=True)


@pytest.mark.slow
def test_round_trip_in_a_clean_interpreter(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = export_trained(load_trained(runs["enas"] / "checkpoints" / "best.pt"), out, whole_model=True)
    assert res.name == "enas_paper" and sorted(p.name for p in out.iterdir()) == ["enas_paper.py", "enas_paper.safetensors"]
    # The module imports only torch and the standard library.
    tree = ast.parse(res.module.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported == {"__future__", "json", "math", "pathlib", "typing", "torch"}
    # The genotype rides in the weights file's metadata.
    from safetensors import safe_open

    with safe_open(str(res.weights), "pt") as f:
        meta = f.metadata()
    payload = load_checkpoint(runs["enas"] / "checkpoints" / "best.pt")
    assert json.loads(meta["genotype"]) == payload["genotype"]
    # Expected outputs from the trained model, computed here with enas_rnn.
    trained = load_trained(runs["enas"] / "checkpoints" / "best.pt")
    gen = torch.Generator().manual_seed(1)
    x, h0, c0 = torch.randn(20, 3, 16, generator=gen), 0.3 * torch.randn(2, 3, 16, generator=gen), torch.zeros(2, 3, 16)
    tokens = torch.randint(0, trained.model.vocab_size, (20, 3), generator=gen)
    with torch.no_grad():
        expected = {"x": x, "h0": h0, "c0": c0, "tokens": tokens, "ref": _stack(trained.model.cores, x, h0, c0),
                    "logits": trained.model(tokens, trained.model.init_hidden(3))[0]}
    torch.save(expected, tmp_path / "expected.pt")
    script = f"""
import sys
try:
    import enas_rnn
    raise SystemExit("enas_rnn is importable: the check is not isolated")
except ImportError:
    pass
sys.path.insert(0, {str(out)!r})
import torch, enas_paper
e = torch.load({str(tmp_path / 'expected.pt')!r}, weights_only=True)
lm = enas_paper.load()
out, (h, c) = lm.layer(e["x"], (e["h0"], e["c0"]))
err = max((a - b).abs().max().item() for a, b in zip((out, h, c), e["ref"]))
logits, _ = lm(e["tokens"])
err = max(err, (logits - e["logits"]).abs().max().item())
assert err <= 1e-6, err
assert "enas_rnn" not in sys.modules
print("ok", err)
"""
    site = str(Path(torch.__file__).resolve().parents[1])  # torch's site-packages, without its .pth files
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": site}
    res_p = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                           text=True)
    assert res_p.returncode == 0, res_p.stderr + res_p.stdout
    assert res_p.stdout.startswith("ok")


@pytest.mark.slow
def test_lstm_genotype_export_matches_nn_lstm(runs: dict[str, Path], tmp_path: Path) -> None:
    # Random nn.LSTM weights through copy_from_nn_lstm and the generated code, without training.
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(8, 12, num_layers=2)
    mod = load_module(generate_source(get_named("lstm"), None, "lstm_cell"), "lstm_cell")
    layer = mod.Layer(8, 12, num_layers=2)
    for k, exported in enumerate(layer.cells):
        one = torch.nn.LSTM(8 if k == 0 else 12, 12)
        one.load_state_dict({f"{n}_l0": getattr(lstm, f"{n}_l{k}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
        cell = FixedCell(get_named("lstm"), one.input_size, 12, state_clip=None)
        copy_from_nn_lstm(cell, one)
        exported.load_state_dict(cell.state_dict())
    x, h0, c0 = torch.randn(30, 4, 8), torch.randn(2, 4, 12), torch.randn(2, 4, 12)
    with torch.no_grad():
        ref_out, (ref_h, ref_c) = lstm(x, (h0, c0))
        out, (h, c) = layer(x, (h0, c0))
    for a, b in zip((ref_out, ref_h, ref_c), (out, h, c)):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
    # A trained nn.LSTM baseline checkpoint exports as the lstm genotype and reproduces nn.LSTM.
    res = export_trained(load_trained(runs["nn_lstm"] / "checkpoints" / "best.pt"), tmp_path)
    assert res.genotype == get_named("lstm") and res.name == "nn_lstm"
    exported = load_module(res.module.read_text(), res.name, res.module).load(res.weights)
    trained = load_trained(runs["nn_lstm"] / "checkpoints" / "best.pt").original
    x, h0, c0 = torch.randn(25, 3, 16), 0.5 * torch.randn(2, 3, 16), 0.5 * torch.randn(2, 3, 16)
    with torch.no_grad():
        ref = _stack(trained.cores, x, h0, c0)
        out, (h, c) = exported(x, (h0, c0))
    for a, b in zip(ref, (out, h, c)):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)  # trained weights: two biases vs one, ~1e-7 apart


@pytest.mark.slow
def test_exported_layer_compiles_and_exports(runs: dict[str, Path], tmp_path: Path) -> None:
    """The export paths the generated docstring promises, each checked: torch.compile at any shape,
    torch.export with a dynamic batch (fixed sequence length: the time loop is unrolled), and the
    one-step Cell exported for any sequence length with the loop in the caller."""
    res = export_trained(load_trained(runs["sampled"] / "checkpoints" / "best.pt"), tmp_path, name="searched")
    layer = load_module(res.module.read_text(), res.name, res.module).load(res.weights)
    x = torch.randn(6, 2, 16)
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        eager = layer(x)
        # aot_eager traces the whole forward through dynamo and AOTAutograd like inductor does, in seconds;
        # inductor itself needs ~40 s of C++ compilation on a 2-core CPU (see the export module's notes).
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
        program = torch.export.export(layer, (x,), dynamic_shapes=({1: batch},))
        exported = program.module()(x)
        x5 = torch.randn(6, 5, 16)  # another batch size, same length
        torch.testing.assert_close(program.module()(x5)[0], layer(x5)[0], atol=1e-6, rtol=0)
        with pytest.raises(Exception):  # another length is outside what the unrolled program holds
            program.module()(torch.randn(9, 2, 16))
        cell = layer.cells[0]
        h = torch.zeros(2, cell.hidden_size)
        # distinct state tensors: export would otherwise specialise the program to h and c being one tensor
        step = torch.export.export(cell, (x[0], (h, h.clone())), dynamic_shapes=({0: batch}, ({0: batch}, {0: batch})))
        xl = torch.randn(11, 2, 16)
        hc = (h, h.clone())
        outs = []
        for t in range(xl.shape[0]):  # the caller's loop: any sequence length
            out_t, hc = step.module()(xl[t], hc)
            outs.append(out_t)
        torch.testing.assert_close(torch.stack(outs), layer(xl)[0], atol=1e-6, rtol=0)
    for got in (compiled, exported):
        torch.testing.assert_close(got[0], eager[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(got[1][0], eager[1][0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("whole_model", [False, True])
def test_generated_module_is_lint_clean_and_says_where_it_comes_from(runs: dict[str, Path], tmp_path: Path,
                                                                     whole_model: bool) -> None:
    from pyflakes.api import check
    from pyflakes.reporter import Reporter

    for run, origin in ((runs["enas"], "the published cell enas_paper (Pham et al. 2018"),
                        (runs["sampled"], "Cell: genotype")):
        res = export_trained(load_trained(run / "checkpoints" / "best.pt"), tmp_path / run.name, whole_model=whole_model)
        text = res.module.read_text()
        out, err = io.StringIO(), io.StringIO()
        assert check(text, str(res.module), Reporter(out, err)) == 0, out.getvalue() + err.getvalue()
        assert origin in text and "Perplexity of these weights: validation" in text and "Weights: checkpoint" in text
        assert ("class LM" in text) == whole_model  # no reference to an LM a layer-only export does not define


def test_bad_inputs_name_the_mismatch(runs: dict[str, Path], tmp_path: Path) -> None:
    ckpt = runs["enas"] / "checkpoints" / "best.pt"
    bad = tmp_path / "bad.json"
    bad.write_text('{"space": "enas", "nodes": [')
    with pytest.raises(GenotypeError, match="malformed JSON"):
        load_trained(ckpt, str(bad))
    with pytest.raises(ExportError, match="from the lstm space but the checkpoint holds a cell of the enas space"):
        load_trained(ckpt, "lstm")
    other = get_named("enas_paper").to_dict()
    other["nodes"][2]["act"] = "tanh"
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ExportError, match="node n3"):
        load_trained(ckpt, str(tmp_path / "other.json"))
    with pytest.raises(ExportError, match="torch.nn.LSTM"):
        load_trained(runs["nn_lstm"] / "checkpoints" / "best.pt", "enas_paper")
    # Weights that do not fit the genotype: the message names the tensors.
    payload = load_checkpoint(runs["sampled"] / "checkpoints" / "best.pt")
    payload["genotype"] = make_space("lstm", 6).sample(11).to_dict()  # 1 xh operand instead of 4
    save_checkpoint(tmp_path / "swapped.pt", payload)
    with pytest.raises(ExportError, match=r"shape cores\.0\.w_x|missing|unexpected"):
        load_trained(tmp_path / "swapped.pt")
    (tmp_path / "garbage.pt").write_bytes(b"nope")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_trained(tmp_path / "garbage.pt")
    with pytest.raises(ExportError, match="no such file"):
        load_trained(tmp_path / "missing.pt")
    with pytest.raises(ExportError, match="neither an enas-train run"):
        resolve_run(tmp_path)


def test_export_never_leaves_half_a_file(runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import enas_rnn.export as ex

    (tmp_path / "enas_paper.py").write_text("# an earlier export\n")

    def broken(*_: Any) -> float:
        raise RuntimeError("disk full")

    monkeypatch.setattr(ex, "self_check", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_trained(load_trained(runs["enas"] / "checkpoints" / "best.pt"), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enas_paper.py"]
    assert (tmp_path / "enas_paper.py").read_text() == "# an earlier export\n"


def test_compare_folder_exports_the_best_valid_cell_run(runs: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "cmp"
    for name, src in (("nn_lstm_same_seed0", "nn_lstm"), ("x_same_seed0", "sampled"), ("x_matched_seed0", "sampled")):
        shutil.copytree(runs[src] / "checkpoints", folder / "runs" / name / "checkpoints")
    # The verdict is about the matched sizing: its run is exported even where the same-size run validated better.
    rows = [{"name": "nn_lstm_same_seed0", "model": "nn_lstm", "sizing": "same", "valid_ppl": 1.0, "status": "trained"},
            {"name": "x_same_seed0", "model": "x", "sizing": "same", "valid_ppl": 7.0, "status": "trained"},
            {"name": "x_matched_seed0", "model": "x", "sizing": "matched", "valid_ppl": 8.0, "status": "trained"}]
    for r in rows:
        r["run_dir"] = f"runs/{r['name']}"
    (folder / "comparison.json").write_text(json.dumps({"cell": "x", "runs": rows}))
    ckpt, name = resolve_run(folder)
    assert ckpt == folder / "runs" / "x_matched_seed0" / "checkpoints" / "best.pt" and name == "x"


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("enas-export")
    cmd = [exe] if exe else [sys.executable, "-m", "enas_rnn.cli.export"]
    return subprocess.run([*cmd, *args, f"hydra.run.dir={cwd / 'hydra'}"], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_cli_export_and_errors(runs: dict[str, Path], tmp_path: Path) -> None:
    res = _cli([f"run={runs['sampled']}", f"out={tmp_path / 'out'}", "name=searched"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out" / "searched.py").is_file() and (tmp_path / "out" / "searched.safetensors").is_file()
    res = _cli([f"checkpoint={runs['enas'] / 'checkpoints' / 'best.pt'}", "cell=lstm", f"out={tmp_path / 'bad'}"], tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("error:") and "lstm space" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").iterdir())


# ---------------------------------------------------------------------------------------- perplexity in the docstring
def _docstring(module: Path) -> str:
    return ast.get_docstring(ast.parse(module.read_text())) or ""


def test_the_docstring_states_the_perplexity_of_the_exported_weights(runs: dict[str, Path], tmp_path: Path) -> None:
    run = runs["nn_lstm"]
    metrics = json.loads((run / "metrics.json").read_text())
    # A caller whose lines name no perplexity (the pipeline's): the export adds the run's measured one.
    trained = load_trained(run / "checkpoints" / "best.pt")
    trained.provenance = ["Cell: the winner of a search.", "Weights: its best compared run."]
    doc = _docstring(export_trained(trained, tmp_path / "a", "with_metrics").module)
    assert (f"Perplexity of these weights: validation {metrics['valid_ppl']:.2f}, test {metrics['test_ppl']:.2f} "
            f"(from {run / 'metrics.json'})") in doc
    # No metrics.json (the run did not finish): the validation its history records at best.pt's step.
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run / "checkpoints", unfinished / "checkpoints")
    doc = _docstring(export_trained(load_trained(unfinished / "checkpoints" / "best.pt"), tmp_path / "b", "no_metrics")
                     .module)
    assert f"Perplexity of these weights: validation {metrics['valid_ppl']:.2f}, test perplexity unknown" in doc
    assert "the validation history in" in doc
    # Neither: said so, with no number.
    alone = tmp_path / "alone" / "checkpoints"
    alone.mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "best.pt", alone / "best.pt")
    doc = _docstring(export_trained(load_trained(alone / "best.pt"), tmp_path / "c", "unknown").module)
    assert "Perplexity unknown:" in doc and "Perplexity of these weights" not in doc


def test_metrics_json_speaks_only_for_best_pt(runs: dict[str, Path]) -> None:
    # last.pt holds the weights of the last step: the run's best validation and its test perplexity belong
    # to best.pt, so only the validation at last.pt's own step (if one ran there) describes it.
    run = runs["sampled"]
    last = run / "checkpoints" / "last.pt"
    payload = load_checkpoint(last)
    at_step = [h["valid_ppl"] for h in payload["loop"]["history"] if h["step"] == payload["step"]]
    valid, test, where = measured_perplexity(last)
    assert test is None and where == f"the validation history in {last}"
    assert [valid] == at_step
    valid, test, where = measured_perplexity(run / "checkpoints" / "best.pt")
    assert where == str(run / "metrics.json") and test == json.loads((run / "metrics.json").read_text())["test_ppl"]
