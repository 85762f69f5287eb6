"""Export a trained cell as a standalone PyTorch module (``<name>.py``) and its weights (``<name>.safetensors``).

The generated module imports only torch and the standard library (json, math, pathlib); it does not
need enas_rnn. It holds

* ``Cell``: one step, ``h_t, (h_t, c_t) = cell(x_t [B, E], (h [B, H], c [B, H]))``, written as one
  line per live node, each with a comment naming the node;
* ``Layer``: ``num_layers`` cells with torch.nn.LSTM's calling convention:
  ``output, (h_n, c_n) = layer(input, (h_0, c_0))`` with ``input`` [T, B, E] (``batch_first=True``:
  [B, T, E]; unbatched [T, E]) and ``h_0, c_0`` shaped like nn.LSTM's, [num_layers, B, H] - zeros when
  omitted. A model trained with ``model.num_layers > 1`` exports every layer, stacked, like nn.LSTM;
  the dropout between layers is a training-time regulariser and is not exported;
* ``LM`` (``whole_model=true``): embedding -> Layer -> decoder, tokens [T, B] -> logits [T, B, V];
* ``load(path=None)``: rebuilds the module from ``<name>.safetensors`` (read with torch alone; the
  genotype JSON and the sizes are in the file's metadata).

The generated code computes exactly what :class:`enas_rnn.cells.FixedCell` computes: the same weight
layout (the safetensors tensors are FixedCell's own state dict, per layer), the same fused GEMMs (the
x_t part of every xh map hoisted out of the time loop, one GEMM per step for the h_{t-1} part), and
the same ``state_clip`` guard, with the clamps that interval analysis proves to be no-ops left out
(see cells.py). The enas space has no cell state; ``c`` is carried through unchanged so the module
keeps nn.LSTM's convention. Before anything is written the generated module is executed and checked
against the trained model; both files are written under temporary names and renamed, so an export
never leaves half a file.

``STATE_CLIP`` is baked into the generated code, not a constructor argument: which clamps are no-ops
depends on its value (e.g. a product of two clamped operands is bounded by clip^2, below clip only
when clip < 1).

The Layer is plain tensor code with a Python loop over time, so ``torch.compile`` (tests use
``backend="aot_eager"``, which traces the whole forward through dynamo and AOTAutograd; inductor works
too but its first CPU compile took ~37 s on 2 cores) and ``torch.export.export`` at a fixed sequence
length both trace it, unrolled over time.

A checkpoint of the nn.LSTM baseline (``model.core=lstm``) exports as the ``lstm`` genotype with
nn.LSTM's weights copied in (``b_ih + b_hh`` folded into one bias) and no guard, so it reproduces
torch.nn.LSTM.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from enas_rnn.checkpoint import BEST, LAST, checkpoint_dir, load_checkpoint
from enas_rnn.conf import CoreKind, TrainAppConfig
from enas_rnn.errors import ConfigError, UserError
from enas_rnn.genotype import ENASNode, Genotype, GenotypeError, LSTMNode, get_named, load_genotype, node_ref, parse_node_ref
from enas_rnn.model import RNNLM, build_model

FORMAT_VERSION = "1"
VERIFY_TOL = 1e-5  # export-time self-check (outputs are in [-1, 1]; float32 GEMM reordering is ~1e-7)


class ExportError(UserError):
    """A run folder, checkpoint or genotype that export cannot use; the message names the mismatch."""


# ====================================================================================================================
# Code generation
# ====================================================================================================================


def _clamp(v: str, lo: str) -> str:
    # hardtanh(v, lo, hi) is clamp(v, lo, hi); cells.py uses it for its one-kernel backward (and relu's
    # gradient at 0 when lo = 0), so the exported module trains like FixedCell too.
    return f"F.hardtanh({v}, {lo}, STATE_CLIP)"


def _operand(src: str, act: str, bound: float, clip: Optional[float]) -> tuple[str, float]:
    """Code and |value| bound of act(src) for an lstm-space operand whose source is bounded by ``bound``.

    Mirrors cells._compile_lstm: identity/relu of an unbounded value get the guard's clamp (relu fused as
    clamp(0, clip)); tanh/sigmoid are bounded by 1 and never clamped.
    """
    if act == "tanh":
        return f"torch.tanh({src})", 1.0
    if act == "sigmoid":
        return f"torch.sigmoid({src})", 1.0
    clamp = clip is not None and bound > clip
    if act == "relu":
        return (_clamp(src, "0.0"), clip) if clamp else (f"torch.relu({src})", bound)  # type: ignore[return-value]
    if act == "identity":
        return (_clamp(src, "-STATE_CLIP"), clip) if clamp else (src, bound)  # type: ignore[return-value]
    raise GenotypeError(f"unknown activation {act!r}")


def _cand(src: str, act: str, clip: Optional[float]) -> str:
    """enas candidate f(h~): h~ comes out of a GEMM, unbounded, so identity/relu get the clamp (cells.py)."""
    return _operand(src, act, math.inf, clip)[0]


def _layout_cell(genotype: Genotype, clip: Optional[float]) -> Any:
    """A 1x1 FixedCell: its ``rows`` give the weight layout the generated code must follow."""
    from enas_rnn.cells import FixedCell

    return FixedCell(genotype, 1, 1, state_clip=clip)


def _lstm_cell_code(genotype: Genotype, clip: Optional[float]) -> tuple[int, list[str], list[str]]:
    """(number of xh rows K, row comments, step body lines) of an lstm-space genotype."""
    layout = _layout_cell(genotype, clip)
    live = genotype.live_nodes()
    row_of: dict[tuple[int, int], int] = {}
    for i in live:
        node = genotype.nodes[i - 1]
        assert isinstance(node, LSTMNode)
        for s, o in enumerate(node.inputs):
            if o.source == "xh":
                (row_of[(i, s)],) = layout.rows([(i, s)])
    K = len(row_of)
    rows = [f"#   row {r}: {node_ref(i)} operand {s + 1} ({genotype.nodes[i - 1].inputs[s].act})"  # type: ignore[union-attr]
            for (i, s), r in sorted(row_of.items(), key=lambda kv: kv[1])]
    body: list[str] = []
    if K:
        body.append("xh = torch.addmm(xp_t, h, w_h).split(H, 1)  # K x [B, H]: W[x_t; h_{t-1}] + b of each xh operand")
    else:
        body.append("# no operand reads xh: h_{t-1} is not used")
    bound: dict[str, float] = {"c": math.inf}  # c_{t-1} comes from outside: assume unbounded
    for i in live:
        node = genotype.nodes[i - 1]
        assert isinstance(node, LSTMNode)
        exprs, bounds = [], []
        for s, o in enumerate(node.inputs):
            if o.source == "xh":
                e, b = _operand(f"xh[{row_of[(i, s)]}]", o.act, math.inf, clip)
            else:
                e, b = _operand(o.source, o.act, bound[o.source], clip)
            exprs.append(e)
            bounds.append(b)
        sym = "+" if node.op == "add" else "*"
        bound[node_ref(i)] = bounds[0] + bounds[1] if node.op == "add" else bounds[0] * bounds[1]
        spelled = ", ".join(f"{o.act}({'W·xh' if o.source == 'xh' else o.source})" for o in node.inputs)
        body.append(f"{node_ref(i)} = {exprs[0]} {sym} {exprs[1]}  # {node_ref(i)} = {node.op}({spelled})")
    dead = [node_ref(i) for i in range(1, genotype.num_nodes + 1) if i not in live]
    if dead:
        body.insert(0, f"# dead nodes (reach neither h_t nor c_t, not computed): {', '.join(dead)}")
    h, c = genotype.outputs["h"], genotype.outputs["c"]
    body.append(f"return {h}, {c}  # h_t = {h}, c_t = {c}")
    return K, rows, body


def _enas_cell_code(genotype: Genotype, clip: Optional[float]) -> tuple[list[tuple[int, int, int]], list[str], list[str]]:
    """(groups (parent, first row, count), weight names, step body lines) of an enas-space genotype.

    Children of one parent share one GEMM ([B, H] x [H, 2kH]), as in cells._run_enas; within a group
    the columns are (gate of each child | candidate of each child) in FixedCell's row order.
    """
    layout = _layout_cell(genotype, clip)
    children: dict[int, list[tuple[int, int]]] = {}
    for i in range(2, genotype.num_nodes + 1):
        parent = parse_node_ref(genotype.nodes[i - 1].input)  # type: ignore[union-attr]
        assert parent is not None
        (r,) = layout.rows([(i, parent)])
        children.setdefault(parent, []).append((r, i))
    groups: list[tuple[int, int, int]] = []
    body = [
        "gate, cand = torch.addmm(xp_t, h, w_hw_h).view(B, 2, H).unbind(1)  # [B, 2H] -> [B, 2, H] -> gate, candidate",
        f"n1 = torch.lerp(h, {_cand('cand', genotype.nodes[0].act, clip)}, torch.sigmoid(gate))"
        f"  # n1 = highway({genotype.nodes[0].act}) over [x_t; h_(t-1)]",
    ]
    names = ["w_hw_h"]
    for parent in sorted(children):  # a parent's value exists before its children run
        kids = sorted(children[parent])
        first, k = kids[0][0], len(kids)
        if [r for r, _ in kids] != list(range(first, first + k)):  # cells.py lays out groups contiguously
            raise RuntimeError(f"unexpected FixedCell layout for the children of n{parent}: rows {kids}")
        groups.append((parent, first, k))
        names.append(f"w_n{parent}")
        who = ", ".join(node_ref(i) for _, i in kids)
        body.append(f"gate, cand = torch.mm(n{parent}, w_n{parent}).view(B, 2, {k}, H).unbind(1)"
                    f"  # children of n{parent} ({who}): [B, {k}, H] each")
        for j, (_, i) in enumerate(kids):
            act = genotype.nodes[i - 1].act  # type: ignore[union-attr]
            body.append(f"n{i} = torch.lerp(n{parent}, {_cand(f'cand[:, {j}]', act, clip)}, "
                        f"torch.sigmoid(gate[:, {j}]))  # n{i} = highway({act}) from n{parent}")
    loose = genotype.loose_ends()
    refs = ", ".join(node_ref(i) for i in loose)
    if len(loose) == 1:
        body.append(f"return {refs}, c  # h_t = {refs}, the only loose end; c passes through")
    else:
        body.append(f"h_t = torch.stack([{refs}]).sum(0) * (1.0 / {len(loose)})  # h_t = mean of the loose ends")
        body.append("return h_t, c  # the enas space has no cell state: c passes through")
    return groups, names, body


def _indent(lines: Sequence[str], n: int) -> str:
    return "\n".join((" " * n + line) if line else "" for line in lines)


def _formula(genotype: Genotype) -> list[str]:
    """The cell as readable equations, for the module docstring."""
    out = []
    if genotype.space == "lstm":
        live = set(genotype.live_nodes())
        for i, node in enumerate(genotype.nodes, 1):
            assert isinstance(node, LSTMNode)
            sym = " + " if node.op == "add" else " * "
            ops = sym.join(f"{o.act}({'W·xh' if o.source == 'xh' else o.source})" for o in node.inputs)
            out.append(f"{node_ref(i)} = {ops}" + ("" if i in live else "   (dead)"))
        out.append(f"h_t = {genotype.outputs['h']}, c_t = {genotype.outputs['c']}")
    else:
        for i, node in enumerate(genotype.nodes, 1):
            assert isinstance(node, ENASNode)
            src = "[x_t; h_(t-1)]" if i == 1 else node.input
            out.append(f"{node_ref(i)} = highway({node.act}) from {src}")
        out.append("h_t = mean(" + ", ".join(node_ref(i) for i in genotype.loose_ends()) + ")")
    return out


def generate_source(genotype: Genotype, state_clip: Optional[float], name: str = "cell", whole_model: bool = False) -> str:
    """Python source of a standalone module computing ``genotype`` as FixedCell does (torch only)."""
    clip = None if state_clip is None else float(state_clip)
    gjson = json.dumps(genotype.to_dict(), sort_keys=True)
    if genotype.space == "lstm":
        K, rows, body = _lstm_cell_code(genotype, clip)
        cell_params = textwrap.dedent(f"""\
            # One row r per live xh operand: x_t @ w_x[:, r] + h_(t-1) @ w_h[:, r] + bias[r] = W[x_t; h_(t-1)] + b.
            self.w_x = nn.Parameter(torch.empty(input_size, {K}, hidden_size))
            self.w_h = nn.Parameter(torch.empty(hidden_size, {K}, hidden_size))
            self.bias = nn.Parameter(torch.empty({K}, hidden_size))""").splitlines()
        project = textwrap.dedent(f"""\
            T, B, E = x.shape
            KH = {K} * self.hidden_size
            # [T*B, E] x [E, K*H] + bias -> [T*B, K*H] -> [T, B, K*H]
            return torch.addmm(self.bias.reshape(KH), x.reshape(T * B, E), self.w_x.reshape(E, KH)).view(T, B, KH)""").splitlines()
        weights = ["H = self.hidden_size", f"return (self.w_h.reshape(H, {K} * H),)  # [H, K, H] -> [H, K*H]"]
        guard = ["return h, c  # lstm space: the guard clamps operands inside the step"]
        unpack = ["H = self.hidden_size", "(w_h,) = w"]
        layout_doc = ["# Weight rows of the xh operands (w_x[:, r], w_h[:, r], bias[r]):", *rows] if rows else []
    else:
        groups, names, body = _enas_cell_code(genotype, clip)
        P = genotype.num_nodes - 1
        cell_params = textwrap.dedent(f"""\
            # Highway node n1 over [x_t; h_(t-1)]: columns (gate c | candidate h~), no bias (enas_lm).
            self.w_hw_x = nn.Parameter(torch.empty(input_size, 2, hidden_size))
            self.w_hw_h = nn.Parameter(torch.empty(hidden_size, 2, hidden_size))
            # One edge row per node l > 1 reading node j: s_j @ w_edge[:, :, r] -> (gate c, candidate h~).
            self.w_edge = nn.Parameter(torch.empty(hidden_size, 2, {P}, hidden_size))""").splitlines()
        project = textwrap.dedent("""\
            T, B, E = x.shape
            H = self.hidden_size
            # [T*B, E] x [E, 2H] -> [T*B, 2H] -> [T, B, 2H]: the x_t part of the highway node n1
            return torch.mm(x.reshape(T * B, E), self.w_hw_x.reshape(E, 2 * H)).view(T, B, 2 * H)""").splitlines()
        weights = ["H = self.hidden_size", "return (", "    self.w_hw_h.reshape(H, 2 * H),  # [H, 2, H] -> [H, 2H]"]
        for parent, first, k in groups:
            weights.append(f"    self.w_edge[:, :, {first}:{first + k}].reshape(H, {2 * k} * H),"
                           f"  # edges out of n{parent}: [H, 2, {k}, H] -> [H, 2*{k}*H]")
        weights.append(")")
        if clip is None:
            guard = ["return h, c  # no guard"]
        else:
            guard = ["# once per forward: every later state is a convex mix of values in [-STATE_CLIP, STATE_CLIP]",
                     "return F.hardtanh(h, -STATE_CLIP, STATE_CLIP), c  # hardtanh = clamp"]
        unpack = ["B, H = h.shape", f"{', '.join(names)}{',' if len(names) == 1 else ''} = w"]
        layout_doc = ["# Edge rows of w_edge (FixedCell's order): " + ", ".join(
            f"n{parent} -> rows {first}..{first + k - 1}" for parent, first, k in groups)] if groups else []

    header = textwrap.dedent(f'''\
        """{name}: a recurrent cell found by enas_rnn, exported as a standalone PyTorch module.

        Space: {genotype.space}; genotype hash {genotype.hash()}.

        ''') + _indent(_formula(genotype), 4) + textwrap.dedent(f'''


        Usage (weights in {name}.safetensors next to this file; only torch and the standard library):

            import {name}
            layer = {name}.load()  # a Layer (an LM when the whole model was exported)
            output, (h_n, c_n) = layer(x)  # x [T, B, E]; h_n, c_n [num_layers, B, H]

        ``Layer`` follows torch.nn.LSTM: ``layer(input, (h_0, c_0))`` with input [T, B, E] ([B, T, E] with
        batch_first=True, [T, E] unbatched) and h_0, c_0 [num_layers, B, H], zeros when omitted.
        Generated by enas_rnn.export (format {FORMAT_VERSION}); computes what enas_rnn.cells.FixedCell computes.
        """

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
        ''')
    cell = [
        "",
        *layout_doc,
        "",
        "",
        "class Cell(nn.Module):",
        '    """One step: x_t [B, E], (h [B, H], c [B, H]) -> h_t, (h_t, c_t)."""',
        "",
        "    def __init__(self, input_size: int, hidden_size: int) -> None:",
        "        super().__init__()",
        "        self.input_size, self.hidden_size = input_size, hidden_size",
        _indent(cell_params, 8),
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
        _indent(project, 8),
        "",
        "    def step_weights(self) -> tuple[Tensor, ...]:",
        '        """The recurrent weights laid out for the step, once per sequence."""',
        _indent(weights, 8),
        "",
        "    def guard_state(self, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:",
        '        """Applied to the incoming state once per forward (as FixedCell does)."""',
        _indent(guard, 8),
        "",
        "    def step(self, xp_t: Tensor, h: Tensor, c: Tensor, w: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:",
        '        """One time step: xp_t (a row of project_input), h, c [B, H] -> h_t, c_t [B, H]."""',
        _indent(unpack, 8),
        _indent(body, 8),
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
    return header + "\n".join(cell) + "\n" + _LAYER_SOURCE + (_LM_SOURCE if whole_model else "") + _LOADER_SOURCE


_LAYER_SOURCE = '''

class Layer(nn.Module):
    """num_layers cells stacked, with torch.nn.LSTM's calling convention.

        output, (h_n, c_n) = layer(input, (h_0, c_0))
        input [T, B, E] ([B, T, E] if batch_first; [T, E] unbatched); h_0, c_0 [num_layers, B, H]
        ([num_layers, H] unbatched), zeros when omitted; output [T, B, H] = h_t of the last layer.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, batch_first: bool = False) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first = batch_first
        self.cells = nn.ModuleList(
            Cell(input_size if layer == 0 else hidden_size, hidden_size) for layer in range(num_layers)
        )

    def forward(
        self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)  # [T, E] -> [T, 1, E]
        if batched and self.batch_first:
            x = x.transpose(0, 1)  # [B, T, E] -> [T, B, E]
        T, B = x.shape[0], x.shape[1]
        if hx is None:
            h0 = x.new_zeros(self.num_layers, B, self.hidden_size)
            c0 = h0
        else:
            h0, c0 = hx
            if not batched:
                h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)  # [L, H] -> [L, 1, H]
        h_n, c_n = [], []
        for layer, cell in enumerate(self.cells):
            h, c = cell.guard_state(h0[layer], c0[layer])
            xp = cell.project_input(x)  # hoisted out of the time loop
            w = cell.step_weights()
            outs = []
            for t in range(T):
                h, c = cell.step(xp[t], h, c, w)
                outs.append(h)
            x = torch.stack(outs) if outs else x.new_empty(0, B, self.hidden_size)  # [T, B, H]
            h_n.append(h)
            c_n.append(c)
        out = x
        if batched and self.batch_first:
            out = out.transpose(0, 1)  # [T, B, H] -> [B, T, H]
        h_out, c_out = torch.stack(h_n), torch.stack(c_n)  # [L, B, H]
        if not batched:
            out, h_out, c_out = out.squeeze(1), h_out.squeeze(1), c_out.squeeze(1)
        return out, (h_out, c_out)
'''

_LM_SOURCE = '''

class LM(nn.Module):
    """The whole language model: tokens [T, B] -> embedding -> Layer -> decoder -> logits [T, B, V]."""

    def __init__(self, vocab_size: int, emb_size: int, hidden_size: int, num_layers: int = 1,
                 tie_weights: bool = False) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_size)
        self.layer = Layer(emb_size, hidden_size, num_layers)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        if tie_weights:  # Press & Wolf 2017: the output embedding is the input embedding
            self.decoder.weight = self.embedding.weight

    def forward(
        self, tokens: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        out, hx = self.layer(self.embedding(tokens), hx)
        return self.decoder(out), hx
'''

_LOADER_SOURCE = '''

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32}


def read_safetensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a .safetensors file, read with torch alone.

    Layout: 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}},
    then the raw little-endian tensor bytes.
    """
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    tensors = {}
    for key, info in header.items():
        start, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        flat = torch.frombuffer(bytearray(data[base + start:base + end]), dtype=dtype) if end > start \\
            else torch.empty(0, dtype=dtype)
        tensors[key] = flat.reshape(info["shape"])
    return tensors, meta


def load(path: Optional[str | Path] = None, batch_first: bool = False) -> nn.Module:
    """The exported module with its trained weights: a Layer, or an LM if the whole model was exported."""
    path = Path(path) if path is not None else Path(__file__).with_suffix(".safetensors")
    tensors, meta = read_safetensors(path)
    info = json.loads(meta["enas_rnn"])
    if info["genotype_hash"] != GENOTYPE_HASH:
        raise ValueError(f"{path} holds weights of cell {info['genotype_hash']}, this module is cell {GENOTYPE_HASH}")
    if info["kind"] == "lm":
        model = LM(info["vocab_size"], info["input_size"], info["hidden_size"], info["num_layers"], info["tie_weights"])
        model.layer.batch_first = batch_first
        if info["tie_weights"]:
            tensors["decoder.weight"] = tensors["embedding.weight"]  # stored once
    else:
        model = Layer(info["input_size"], info["hidden_size"], info["num_layers"], batch_first)
    model.load_state_dict(tensors)
    return model
'''


# ====================================================================================================================
# Trained weights
# ====================================================================================================================


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


def _genotype_mismatch(given: Genotype, saved: Genotype) -> str:
    """One phrase naming how two genotypes differ."""
    if given.space != saved.space:
        return f"the genotype is from the {given.space} space but the checkpoint holds a cell of the {saved.space} space"
    if given.num_nodes != saved.num_nodes:
        return f"the genotype has {given.num_nodes} nodes, the checkpoint's cell {saved.num_nodes}"
    for i, (a, b) in enumerate(zip(given.nodes, saved.nodes), 1):
        if a != b:
            return f"node {node_ref(i)} is {a.to_dict()} in the genotype but {b.to_dict()} in the checkpoint"
    return f"outputs {dict(given.outputs)} in the genotype but {dict(saved.outputs)} in the checkpoint"


def _load_strict(model: nn.Module, sd: dict[str, Tensor], what: str, source: str) -> None:
    """load_state_dict that names the missing, unexpected and misshapen weights instead of a wall of text."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {list(sd[k].shape)} (needs {list(own[k].shape)})" for k in own if k in sd and sd[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else ""))
    if unexpected:
        problems.append("unexpected " + ", ".join(unexpected[:4]) + (" ..." if len(unexpected) > 4 else ""))
    if shapes:
        problems.append("shape " + ", ".join(shapes[:3]) + (" ..." if len(shapes) > 3 else ""))
    if problems:
        raise ExportError(f"{what} does not match the weights in {source}: " + "; ".join(problems))
    model.load_state_dict(sd)


def load_trained(checkpoint: str | Path, cell: Optional[str] = None) -> Trained:
    """Rebuilds the trained model of a checkpoint (``{"config", "genotype", "state_dicts": {"model"}}``).

    ``cell`` (a name or a genotype file) is checked against the checkpoint: a genotype from another
    space, with other nodes, or whose weights do not fit the checkpoint's is refused with the reason.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise ExportError(f"checkpoint={checkpoint}: no such file (a run's weights are in <run>/checkpoints/{BEST})")
    payload = load_checkpoint(path)  # weights_only=True; CheckpointError when unreadable
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainAppConfig), payload["config"])
    except Exception as exc:  # omegaconf raises several types for a foreign config
        raise ExportError(f"{path}: its config is not an enas-train config ({str(exc).splitlines()[0]})") from None
    sd = payload["state_dicts"].get("model") if isinstance(payload["state_dicts"], dict) else None
    if not sd or "embedding.weight" not in sd:
        raise ExportError(f"{path} holds no language-model weights (state_dicts.model); is it a search checkpoint?")
    vocab_size = int(sd["embedding.weight"].shape[0])
    given = load_genotype(cell) if cell else None
    if cfg.model.core == CoreKind.lstm:
        return _from_baseline(cfg, sd, vocab_size, given, str(path))
    if payload.get("genotype") is None and given is None:
        raise ExportError(f"{path} records no genotype: pass cell=<name or genotype.json>")
    saved = Genotype.from_dict(payload["genotype"]) if payload.get("genotype") is not None else None
    genotype = saved if saved is not None else given
    assert genotype is not None
    if given is not None and saved is not None and given != saved:
        if given.canonical() != saved.canonical():
            raise ExportError(f"{cell} is not the cell {path} was trained with: {_genotype_mismatch(given, saved)}")
        # The same cell spelled differently: the weights follow the checkpoint's node numbering.
        genotype = saved
    from enas_rnn.cells import FixedCell

    clip = cfg.model.state_clip

    def factory(i: int, h: int) -> nn.Module:
        return FixedCell(genotype, i, h, state_clip=clip)

    model = build_model(cfg.model, vocab_size, factory)
    label = f"genotype {cell}" if cell else f"the checkpoint's genotype ({genotype.space} space)"
    _load_strict(model, sd, label, str(path))
    model.eval()
    return Trained(genotype, model, model, clip, bool(cfg.model.tie_weights), str(path), genotype.name)


def _from_baseline(cfg: DictConfig, sd: dict[str, Tensor], vocab_size: int, given: Optional[Genotype], source: str) -> Trained:
    """An nn.LSTM checkpoint as the ``lstm`` genotype: nn.LSTM's weights copied in, no guard."""
    from enas_rnn.cells import FixedCell, copy_from_nn_lstm

    lstm_g = get_named("lstm")
    if given is not None and given.canonical() != lstm_g.canonical():
        raise ExportError(f"{source} holds a torch.nn.LSTM (model.core=lstm), which exports only as the lstm "
                          f"genotype; the given cell differs from it: {_genotype_mismatch(given, lstm_g)}")
    original = build_model(cfg.model, vocab_size)
    _load_strict(original, sd, "an nn.LSTM language model", source)
    original.eval()

    def factory(i: int, h: int) -> nn.Module:
        return FixedCell(lstm_g, i, h, state_clip=None)  # nn.LSTM has no guard

    model = build_model(cfg.model, vocab_size, factory)
    with torch.no_grad():
        model.embedding.weight.copy_(original.embedding.weight)
        model.decoder.weight.copy_(original.decoder.weight)
        model.decoder.bias.copy_(original.decoder.bias)
    for fixed, core in zip(model.cores, original.cores):
        copy_from_nn_lstm(fixed, core.lstm)
    model.eval()
    return Trained(lstm_g, model, original, None, bool(cfg.model.tie_weights), source, "nn_lstm")


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
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = module_name(name or trained.name, trained.genotype)
    source = generate_source(trained.genotype, trained.state_clip, name, whole_model)
    core0 = trained.model.cores[0]
    info = {
        "kind": "lm" if whole_model else "layer", "format": FORMAT_VERSION, "genotype_hash": trained.genotype.hash(),
        "input_size": core0.input_size if not whole_model else trained.model.cfg.emb_size,
        "hidden_size": core0.hidden_size, "num_layers": len(trained.model.cores), "state_clip": trained.state_clip,
        "vocab_size": trained.model.vocab_size, "tie_weights": trained.tie_weights, "source": trained.source,
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
    finally:
        for t in tmps:
            if os.path.exists(t):
                os.unlink(t)
    return ExportResult(py_final, st_final, name, trained.genotype, err, trained.source)


# ====================================================================================================================
# Run folders and the app
# ====================================================================================================================


def resolve_run(run: str | Path) -> tuple[Path, Optional[str]]:
    """The checkpoint to export from a run folder, and a suggested name.

    * enas-train run: ``checkpoints/best.pt`` (the best-validation weights);
    * enas-compare run: the run of the compared cell (``cell=``, not the baseline or extra cells) with
      the best validation perplexity over sizings and seeds; its ``checkpoints/best.pt``. Export an
      extra cell with ``run=<compare folder>/runs/<model>_<sizing>_seed<k>``.
    """
    folder = Path(run)
    if not folder.is_dir():
        raise ExportError(f"run={run}: no such folder")
    report_path = folder / "comparison.json"
    if report_path.is_file():
        try:
            report = json.loads(report_path.read_text())
            cell, runs = report["cell"], report["runs"]
        except (ValueError, KeyError) as exc:
            raise ExportError(f"{report_path} is unreadable ({exc}); re-run enas-compare in that folder") from None
        ok = [r for r in runs if r["model"] == cell and r.get("valid_ppl") is not None
              and math.isfinite(r["valid_ppl"]) and r.get("status") != "diverged"]
        if not ok:
            raise ExportError(f"{folder}: no finished, finite run of cell {cell} in comparison.json")
        best = min(ok, key=lambda r: r["valid_ppl"])
        ckpt = folder / best["run_dir"] / "checkpoints" / BEST
        if not ckpt.is_file():
            raise ExportError(f"{folder}: the best run of {cell} ({best['name']}) has no checkpoints/{BEST}")
        return ckpt, cell
    ckpt = checkpoint_dir(folder) / BEST
    if ckpt.is_file():
        return ckpt, None
    if (checkpoint_dir(folder) / LAST).is_file():
        raise ExportError(f"{folder} has no checkpoints/{BEST} yet (no validation finished): let the run finish, "
                          f"or pass checkpoint={checkpoint_dir(folder) / LAST}")
    hint = " (an enas-search run: retrain its cell first, enas-train model=cell cell=<run>/best_genotype.json)" \
        if (folder / "best_genotype.json").is_file() else ""
    raise ExportError(f"{folder} is neither an enas-train run (checkpoints/{BEST}) nor an enas-compare run "
                      f"(comparison.json){hint}")


def run_export(cfg: DictConfig, default_out: str | Path) -> ExportResult:
    """`enas-export`: run=<folder> or checkpoint=<file> [cell=<genotype>] -> <out>/<name>.{py,safetensors}."""
    if bool(cfg.run) == bool(cfg.checkpoint):
        raise ConfigError("pass exactly one of run=<enas-train or enas-compare folder> or checkpoint=<file> "
                          "(with cell=<name or genotype.json> to check it against the weights)")
    if cfg.name is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(cfg.name)):
        raise ConfigError(f"invalid config value name={cfg.name!r}: valid values are Python identifiers "
                          "(the module is imported by that name)")
    if cfg.run:
        ckpt, suggested = resolve_run(cfg.run)
    else:
        ckpt, suggested = Path(cfg.checkpoint), None
    trained = load_trained(ckpt, cfg.cell)
    name = cfg.name or suggested or trained.name
    return export_trained(trained, Path(cfg.out) if cfg.out else Path(default_out), name, bool(cfg.whole_model))


__all__ = [
    "ExportError",
    "ExportResult",
    "Trained",
    "generate_source",
    "load_module",
    "load_trained",
    "export_trained",
    "resolve_run",
    "run_export",
    "module_name",
    "self_check",
]
