"""Export a trained cell as a standalone PyTorch module (``<name>.py``) and its weights (``<name>.safetensors``).

The generated module imports only torch and the standard library; it does not need enas_rnn. It
holds

* ``Cell``: one step, ``h_t, (h_t, c_t) = cell(x_t [B, E], (h [B, H], c [B, H]))``, printed from the
  very plan :class:`enas_rnn.cells.FixedCell` executes (the space's ``compile``: the same registers,
  activation groups, clamps and weight rows), by the space's ``export_parts`` - one analysis, two
  back ends;
* ``Layer``: ``num_layers`` cells with torch.nn.LSTM's calling convention (static code,
  ``export_templates/layer.py``); the dropout between layers is a training-time regulariser and is
  not exported;
* ``LM`` (``whole_model=true``): embedding -> Layer -> decoder (``export_templates/lm.py``);
* ``load(path=None)``: rebuilds the module from ``<name>.safetensors`` (read with torch alone).

Before anything is written the generated module is executed and checked against the trained model;
both files are written under temporary names and renamed, so an export never leaves half a file.

The docstring states the perplexity of the exported weights (:func:`perplexity_provenance`): the
run's ``metrics.json`` for its ``best.pt``, else the validation recorded at the checkpoint's step in
the run's checkpoints, else "perplexity unknown" - never a number measured on other weights.

``STATE_CLIP`` is baked into the generated code, not a constructor argument: which clamps are no-ops
depends on its value (e.g. a product of two clamped operands is bounded by clip^2, below clip only
when clip < 1).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import types
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import save_file
from torch import Tensor

from enas_rnn.checkpoint import BEST, LAST, load_checkpoint, previous
from enas_rnn.errors import CheckpointError, UserError
from enas_rnn.genotype import Genotype
from enas_rnn.model import RNNLM

__all__ = ["ExportError", "ExportResult", "Trained", "generate_source", "load_module", "export_trained",
           "module_name", "self_check", "measured_perplexity", "perplexity_provenance", "FORMAT_VERSION"]

FORMAT_VERSION = "2"
VERIFY_TOL = 1e-5  # export-time self-check (outputs are in [-1, 1]; float32 GEMM reordering is ~1e-7)
_MARKER = "# --- exported ---"


class ExportError(UserError):
    """A run folder, checkpoint or genotype that export cannot use; the message names the mismatch."""


@dataclass
class Trained:
    """A trained language model ready to export: FixedCell cores, whatever core it was trained with."""

    genotype: Genotype
    model: RNNLM  # cores are FixedCells (an nn.LSTM baseline is converted)
    original: RNNLM  # the model as trained (for the self-check)
    state_clip: Optional[float]
    tie_weights: bool
    source: str  # the checkpoint file
    name: Optional[str]  # a suggested module name
    # Where the cell and its weights come from, one line each (the module docstring states them).
    provenance: list[str] = field(default_factory=list)


# ====================================================================================================================
# What the exported weights reached
# ====================================================================================================================


def _finite(v: Any) -> Optional[float]:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _validation_at(step: Any, payload: dict[str, Any]) -> Optional[float]:
    """The validation perplexity a resumable checkpoint's history records at ``step``, if any."""
    loop = payload.get("loop")
    history = loop.get("history") if isinstance(loop, dict) else None
    for entry in history or []:
        if isinstance(entry, dict) and entry.get("step") == step:
            return _finite(entry.get("valid_ppl"))
    return None


def measured_perplexity(checkpoint: str | Path, payload: Optional[dict[str, Any]] = None
                        ) -> tuple[Optional[float], Optional[float], Optional[str]]:
    """(validation perplexity, test perplexity, where they were read) of the weights in ``checkpoint``;
    None for what no file records.

    * ``<run>/checkpoints/best.pt`` of a finished run: ``<run>/metrics.json`` (``valid_ppl``, the best
      validation, and ``test_ppl``, measured on those weights; enas-train, enas-compare, enas-compress);
    * otherwise (a run that has not finished, or ``last.pt``): the validation the run's history
      (``loop.history`` of the checkpoint itself, then of ``last.pt`` / ``last.prev.pt`` beside it)
      records at the checkpoint's own step; no test perplexity.

    ``payload`` is the loaded checkpoint when the caller has it (else it is read). Unreadable files
    count as absent: this never raises.
    """
    path = Path(checkpoint)
    metrics = path.parent.parent / "metrics.json"
    if path.name == BEST and metrics.is_file():
        try:
            m = json.loads(metrics.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            m = None
        if isinstance(m, dict) and (_finite(m.get("valid_ppl")) or _finite(m.get("test_ppl"))):
            return _finite(m.get("valid_ppl")), _finite(m.get("test_ppl")), str(metrics)
    try:
        own = payload if payload is not None else load_checkpoint(path)
    except CheckpointError:
        return None, None, None
    step = own.get("step")
    for candidate in (path, path.parent / LAST, previous(path.parent / LAST)):
        try:
            data = own if candidate == path else load_checkpoint(candidate) if candidate.is_file() else None
        except CheckpointError:
            continue
        valid = _validation_at(step, data) if data is not None else None
        if valid is not None:
            return valid, None, f"the validation history in {candidate}"
    return None, None, None


def perplexity_provenance(checkpoint: str | Path, payload: Optional[dict[str, Any]] = None) -> str:
    """One docstring sentence with the perplexity of the exported weights (:func:`measured_perplexity`),
    or "Perplexity unknown: ..." saying what is missing."""
    valid, test, where = measured_perplexity(checkpoint, payload)
    if where is None:
        return (f"Perplexity unknown: {checkpoint} has no metrics.json beside its run and no validation recorded at "
                "its step, so no perplexity of these weights was measured.")
    parts = [f"validation {valid:.2f}" if valid is not None else "validation perplexity unknown",
             f"test {test:.2f}" if test is not None else "test perplexity unknown (the run has no test result yet)"]
    return f"Perplexity of these weights: {', '.join(parts)} (from {where})."


def _states_perplexity(lines: list[str]) -> bool:
    return any("erplexity" in line for line in lines)


def _template(name: str) -> str:
    """The exported part of ``export_templates/<name>.py`` (below its marker)."""
    text = resources.files("enas_rnn.export_templates").joinpath(f"{name}.py").read_text(encoding="utf-8")
    return "\n\n" + text.split(_MARKER, 1)[1].strip("\n") + "\n"


def _indent(lines: list[str], n: int) -> str:
    return "\n".join((" " * n + line) if line else "" for line in lines)


def _origin(genotype: Genotype) -> list[str]:
    if genotype.source:
        return [f"Cell: the published cell {genotype.name or genotype.hash()} ({genotype.source})."]
    return [f"Cell: {genotype.name or 'a cell'} (genotype hash {genotype.hash()})."]


def generate_source(genotype: Genotype, state_clip: Optional[float], name: str = "cell", whole_model: bool = False,
                    provenance: Optional[list[str]] = None) -> str:
    """Python source of a standalone module computing ``genotype`` as FixedCell does (torch only)."""
    clip = None if state_clip is None else float(state_clip)
    kind = genotype.kind
    parts = kind.export_parts(kind.compile(genotype, clip), genotype, clip)
    gjson = json.dumps(genotype.to_dict(), sort_keys=True)
    about = provenance if provenance else _origin(genotype)
    what = "An LM (embedding, Layer, decoder)" if whole_model else "A Layer"
    doc = [
        f'"""{name}: a recurrent cell exported by enas_rnn as a standalone PyTorch module (torch only).',
        "",
        *about,
        f"Space: {genotype.space}; genotype hash {genotype.hash()}. The cell, one line per node:",
        "",
        *["    " + line for line in genotype.formula()],
        "",
        f"Usage (weights in {name}.safetensors next to this file; only torch and the standard library):",
        "",
        f"    import {name}",
        f"    model = {name}.load()  # {what} with nn.LSTM's calling convention",
        "    output, (h_n, c_n) = model(x)  # x [T, B, E] (tokens [T, B] for an LM); h_n, c_n [num_layers, B, H]",
        "",
        "``Layer`` follows torch.nn.LSTM: ``layer(input, (h_0, c_0))`` with input [T, B, E] ([B, T, E] with",
        "batch_first=True, [T, E] unbatched) and h_0, c_0 [num_layers, B, H], zeros when omitted.",
        "",
        "Compiling and exporting (checked by enas_rnn's tests):",
        "",
        "* ``torch.compile(model)`` works for any batch and sequence length.",
        "* ``torch.export.export(model, (x,), dynamic_shapes=...)`` accepts a dynamic batch dimension; the",
        "  time loop is Python, so the exported program is unrolled at the example's sequence length",
        "  and runs only at that length.",
        "* For any sequence length, export one step instead and loop in the caller:",
        "  ``torch.export.export(model.cells[0], (x_t, (h, c)))`` (the ``Cell``: x_t [B, E], h, c [B, H]; pass",
        "  two distinct tensors for h and c, or the program assumes they are one).",
        "",
        f"Generated by enas_rnn.export (format {FORMAT_VERSION}); computes what enas_rnn.cells.FixedCell computes.",
        '"""',
    ]
    head = "\n".join(doc) + f'''

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

GENOTYPE = {gjson!r}
GENOTYPE_HASH = "{genotype.hash()}"
SPACE = "{genotype.space}"
# The guard of enas_rnn.cells: unbounded operands are clamped to [-STATE_CLIP, STATE_CLIP]
# (F.hardtanh(v, lo, STATE_CLIP) below is that clamp).
STATE_CLIP = {clip!r}
'''
    cell = [
        "",
        *parts.layout,
        "",
        "",
        "class Cell(nn.Module):",
        '    """One step: x_t [B, E], (h [B, H], c [B, H]) -> h_t, (h_t, c_t)."""',
        "",
        "    def __init__(self, input_size: int, hidden_size: int) -> None:",
        "        super().__init__()",
        "        self.input_size, self.hidden_size = input_size, hidden_size",
        _indent(parts.params, 8),
        "        self.reset_parameters()",
        "",
        "    def reset_parameters(self) -> None:",
        '        """U(-1/sqrt(H), 1/sqrt(H)), like torch.nn.LSTM (load() overwrites it)."""',
        "        r = 1.0 / math.sqrt(self.hidden_size)",
        "        for p in self.parameters():",
        "            nn.init.uniform_(p, -r, r)",
        "",
        "    def project_input(self, x: Tensor) -> Tensor:",
        '        """The x_t part of the step for a whole sequence at once (one GEMM): x [T, B, E] -> [T, B, *]."""',
        _indent(parts.project, 8),
        "",
        "    def step_weights(self) -> tuple[Tensor, ...]:",
        '        """The recurrent weights laid out for the step, once per sequence."""',
        _indent(parts.weights, 8),
        "",
        "    def guard_state(self, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:",
        '        """Applied to the incoming state once per forward (as FixedCell does)."""',
        _indent(parts.guard, 8),
        "",
        "    def step(self, xp_t: Tensor, h: Tensor, c: Tensor, w: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:",
        '        """One time step: xp_t (a row of project_input), h, c [B, H] -> h_t, c_t [B, H]."""',
        _indent(parts.step, 8),
        "",
        "    def forward(self, x_t: Tensor, state: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:",
        '        """One step on x_t [B, E]; state (h, c) each [B, H], zeros when None."""',
        "        if state is None:",
        "            zero = x_t.new_zeros(x_t.shape[0], self.hidden_size)",
        "            state = (zero, zero)",
        "        h, c = self.guard_state(*state)",
        "        h, c = self.step(self.project_input(x_t.unsqueeze(0))[0], h, c, self.step_weights())",
        "        return h, (h, c)",
    ]
    tail = _template("layer") + (_template("lm") if whole_model else "") + _template("safetensors_reader")
    tail += _template("load_lm" if whole_model else "load_layer")
    return head + "\n".join(cell) + "\n" + tail


# ====================================================================================================================
# Writing
# ====================================================================================================================


@dataclass
class ExportResult:
    """What an export wrote."""

    module: Path
    weights: Path
    name: str
    genotype: Genotype
    max_error: float  # self-check: exported vs trained outputs
    source: str


def module_name(raw: Optional[str], genotype: Genotype) -> str:
    """A valid, importable module name: the given or suggested one, else cell_<hash>."""
    name = re.sub(r"\W+", "_", raw or "").strip("_") or f"cell_{genotype.hash()[:8]}"
    if name[0].isdigit():
        name = f"cell_{name}"
    if name in sys.stdlib_module_names or name in {"torch", "enas_rnn", "safetensors", "numpy"}:
        name = f"{name}_cell"  # a module named json.py would shadow the json it imports
    return name


def load_module(source: str, name: str, file: Optional[Path] = None) -> types.ModuleType:
    """Executes generated source as a module (not registered in sys.modules)."""
    mod = types.ModuleType(name)
    mod.__file__ = str(file) if file else f"<{name}>"
    exec(compile(source, mod.__file__, "exec"), mod.__dict__)  # noqa: S102 - our own generated code
    return mod


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tensors(trained: Trained, whole_model: bool) -> dict[str, Tensor]:
    prefix = "layer." if whole_model else ""
    out = {}
    for layer, core in enumerate(trained.model.cores):
        for k, v in core.state_dict().items():
            out[f"{prefix}cells.{layer}.{k}"] = v.detach().to("cpu", torch.float32).contiguous()
    if whole_model:
        m = trained.model
        out["embedding.weight"] = m.embedding.weight.detach().cpu().contiguous()
        out["decoder.bias"] = m.decoder.bias.detach().cpu().contiguous()
        if not trained.tie_weights:
            out["decoder.weight"] = m.decoder.weight.detach().cpu().contiguous()
    return out


def _reference(model: RNNLM, x: Tensor, h0: Tensor, c0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Runs the trained cores as the language model does; states [L, B, H] in, [L, B, H] out."""
    hs, cs = [], []
    for layer, core in enumerate(model.cores):
        if hasattr(core, "lstm"):  # nn.LSTM keeps [1, B, H] states
            x, (h, c) = core(x, (h0[layer : layer + 1], c0[layer : layer + 1]))
            h, c = h[0], c[0]
        else:
            x, (h, c) = core(x, (h0[layer], c0[layer]))
        hs.append(h)
        cs.append(c)
    return x, torch.stack(hs), torch.stack(cs)


@torch.no_grad()
def self_check(trained: Trained, mod: types.ModuleType, weights: Path, whole_model: bool) -> float:
    """Max |exported - trained| over the layer's outputs and states (and the logits of the whole model)."""
    exported = mod.load(weights)
    layer = exported.layer if whole_model else exported
    core0 = trained.model.cores[0]
    E, H, L = core0.input_size, core0.hidden_size, len(trained.model.cores)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, E, generator=gen)
    h0, c0 = 0.5 * torch.randn(L, 3, H, generator=gen), 0.5 * torch.randn(L, 3, H, generator=gen)
    ref = _reference(trained.original.to("cpu"), x, h0, c0)
    got = layer(x, (h0, c0))
    err = max((ref[0] - got[0]).abs().max().item(), (ref[1] - got[1][0]).abs().max().item(),
              (ref[2] - got[1][1]).abs().max().item())
    if whole_model:
        tokens = torch.randint(0, trained.model.vocab_size, (12, 3), generator=gen)
        m = trained.original.to("cpu")
        logits_ref, _ = m(tokens, m.init_hidden(3))
        logits, _ = exported(tokens)
        err = max(err, (logits_ref - logits).abs().max().item())
    return err


def export_trained(trained: Trained, out_dir: str | Path, name: Optional[str] = None, whole_model: bool = False) -> ExportResult:
    """Writes ``<out>/<name>.py`` and ``<out>/<name>.safetensors`` after checking them against the model."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the output folder out={out_dir} ({exc.strerror or exc}): "
                          "pass out=<a writable folder>") from None
    name = module_name(name or trained.name, trained.genotype)
    about = list(trained.provenance or _origin(trained.genotype))
    if not _states_perplexity(about):  # the caller's lines say where the weights come from, this what they reach
        about.append(perplexity_provenance(trained.source))
    source = generate_source(trained.genotype, trained.state_clip, name, whole_model, about)
    core0 = trained.model.cores[0]
    info = {
        "kind": "lm" if whole_model else "layer", "format": FORMAT_VERSION, "genotype_hash": trained.genotype.hash(),
        "input_size": core0.input_size if not whole_model else trained.model.cfg.emb_size,
        "hidden_size": core0.hidden_size, "num_layers": len(trained.model.cores), "state_clip": trained.state_clip,
        "vocab_size": trained.model.vocab_size, "tie_weights": trained.tie_weights, "source": trained.source,
        "provenance": about,
    }
    metadata = {"format": "pt", "genotype": trained.genotype.to_json(indent=None), "enas_rnn": json.dumps(info)}
    py_final, st_final = out / f"{name}.py", out / f"{name}.safetensors"
    tmps: list[str] = []
    try:
        fd, py_tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".py.tmp", dir=out)
        tmps.append(py_tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(source)
        fd, st_tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".safetensors.tmp", dir=out)
        os.close(fd)
        tmps.append(st_tmp)
        save_file(_tensors(trained, whole_model), st_tmp, metadata=metadata)
        mod = load_module(source, name, py_final)
        err = self_check(trained, mod, Path(st_tmp), whole_model)
        if not err <= VERIFY_TOL:  # also catches nan
            raise RuntimeError(f"exported {name} differs from the trained model by {err:.3g} (> {VERIFY_TOL}); "
                               "this is a bug in enas_rnn.export")
        mode = 0o666 & ~_umask()  # mkstemp makes 0600; give the files open()'s usual mode
        os.chmod(st_tmp, mode)
        os.chmod(py_tmp, mode)
        os.replace(st_tmp, st_final)
        os.replace(py_tmp, py_final)
    except OSError as exc:
        raise ExportError(f"cannot write the export to {out} ({exc.strerror or exc}): free some space or pass "
                          "out=<another folder>; nothing was left behind") from None
    finally:
        for t in tmps:
            if os.path.exists(t):
                os.unlink(t)
    return ExportResult(py_final, st_final, name, trained.genotype, err, trained.source)
