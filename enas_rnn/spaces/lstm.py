"""The ``lstm`` space (after Abed & Gyires-Tóth, SAMI 2021): everything an lstm-space cell means.

Inputs ``xh`` (the pair x_t, h_{t-1}) and ``c`` (c_{t-1}). Node i has an ``op`` (add, mul) over
two operands, each ``(source, activation)``; an operand reading ``xh`` applies its own affine map
W[x_t; h_{t-1}] + b (one per node and operand slot). ``outputs`` names the node that is h_t and
the node that is c_t; nodes that reach neither are dead and cost nothing. Vanilla LSTM is a point
of this space (the named cell ``lstm``)::

    n1 = sigmoid(W1·xh) * tanh(W2·xh)     # i * g
    n2 = identity(c)    * sigmoid(W3·xh)  # c_{t-1} * f
    n3 = identity(n1)   + identity(n2)    # c_t
    n4 = tanh(n3)       * sigmoid(W4·xh)  # h_t = o * tanh(c_t)

Decisions (N = num_nodes)::

    for node i = 1..N:  source a [xh, c, n1..n_{i-1}], act a [identity tanh sigmoid relu],
                        source b, act b, op [add, mul]
    output h [n1..nN], output c [n1..nN]

Weight banks (a row is one (node, operand slot)): ``w_x [E, S, H]``, ``w_h [H, S, H]``,
``bias [S, H]`` with S = 2N in the supernet and k (the live xh operands) in a fixed cell.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Optional

import torch
from torch import Tensor, nn

import enas_rnn.native as native
from enas_rnn.genotype import (
    CellAnalysis,
    Genotype,
    GenotypeError,
    Outputs,
    node_ref,
    parse_node_ref,
    register_space,
)
from enas_rnn.kernels import (
    ACTIVATIONS,
    BOUNDED,
    GROUP_ORDER,
    POOL,
    ZERO_PRESERVING,
    Op,
    act_bound,
    act_op,
    binary_op,
    hoist,
    needs_clamp,
    take,
)
from enas_rnn.spaces.base import (
    Decision,
    ExportParts,
    GraphBox,
    GraphEdge,
    Hidden,
    SearchSpace,
    options,
)
from enas_rnn.spaces.growth import Poly, classify, padd, pconst, pmul, pvar, worst

__all__ = ["Operand", "LSTMNode", "LSTMPlan", "LSTMSpace", "copy_from_nn_lstm", "nn_lstm_gates", "OPS"]

#: Binary ops of a node; both are commutative (canonical() relies on that).
OPS: tuple[str, ...] = ("add", "mul")
INPUTS: tuple[str, ...] = ("xh", "c")
OUTPUT_NAMES: tuple[str, ...] = ("h", "c")
# template=memory: the forget gate G of c_t = n1 + c_{t-1} * G reads x_t, h_{t-1} or n1 (= i * g) through a
# squashing activation, so |G| <= 1 and the memory can drift by at most a bounded amount per step (as the
# LSTM's), never blow up; n1 reads two maps of xh, so c_t always carries the input.
GATE_SOURCES: tuple[str, ...] = ("xh", "n1")
GATE_ACTS: tuple[str, ...] = ("sigmoid", "tanh")
# template=gates: the LSTM's own skeleton on the last four nodes, with its signed candidate tanh(W·xh) and
# its output o * tanh(c_t) fixed (Hochreiter & Schmidhuber 1997; Greff et al. 2017, "LSTM: a search space
# odyssey", found the forget gate and the output squash the two parts that cannot go):
#     n(N-3) = sigmoid(S_i) * tanh(W·xh)   n(N-2) = identity(c) * sigmoid(S_f)
#     n(N-1) = n(N-3) + n(N-2) = c_t        nN = tanh(c_t) * sigmoid(S_o) = h_t
# and only the gates' sources S_i, S_f, S_o are searched: xh (the gate's own map, as in nn.LSTM), c_(t-1)
# (a peephole without weights) or one of the free nodes n1..n(N-4), which are searched as in the free
# space. Every cell of it is an LSTM with (possibly) computed gates: never degenerate, at worst "linear".
GATES: tuple[str, ...] = ("i", "f", "o")
# Above this many tie permutations canonical() stops brute-forcing automorphic nodes
# and keeps a deterministic (still valid, possibly non-unique) numbering.
_MAX_TIE_PERMUTATIONS = 5040


class Operand(NamedTuple):
    """One operand of a node: a source and the activation applied to it."""

    source: str
    act: str


@dataclass(frozen=True)
class LSTMNode:
    """A node: ``op(act_a(source_a), act_b(source_b))``."""

    op: str
    inputs: tuple[Operand, Operand]

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(o.source for o in self.inputs)

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "inputs": [[o.source, o.act] for o in self.inputs]}


def _err(where: str, msg: str) -> GenotypeError:
    return GenotypeError(f"{where}: {msg}")


def _coerce_operand(raw: Any, where: str) -> Operand:
    if isinstance(raw, Operand):
        return raw
    if isinstance(raw, Mapping):
        missing = [k for k in ("source", "act") if k not in raw]
        if missing:
            raise _err(where, f"missing key(s) {missing}; an operand is [source, act]")
        return Operand(str(raw["source"]), str(raw["act"]))
    if isinstance(raw, Sequence) and not isinstance(raw, str) and len(raw) == 2:
        return Operand(str(raw[0]), str(raw[1]))
    raise _err(where, f"operand {raw!r} is not a [source, act] pair")


def _operand_key(o: Operand) -> tuple[int, int, int, str]:
    """Sort key for operands: inputs before nodes, nodes by number, then activation."""
    idx = parse_node_ref(o.source)
    src_rank = INPUTS.index(o.source) if idx is None else 0
    return (0 if idx is None else 1, src_rank if idx is None else idx, ACTIVATIONS.index(o.act), o.act)


def _digest(text: str) -> str:
    """Short, isomorphism-invariant stand-in for a structural signature string."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


# ============================================================================ the plan
@dataclass(frozen=True, eq=False)
class LSTMPlan:
    """Straight-line program of one genotype, executed by :func:`run_lstm` and printed by export.

    Registers: 0 = c_{t-1}; 1..k = activated xh operands (plan slot order = bank row order); then
    derived operands act(source) and node values. ``program`` rows are (op, dst, a, b); b < 0 means
    unary. ``names`` gives each register a variable name for the exported code.
    """

    keys: tuple[tuple[int, int], ...]  # (node, slot) of each live xh operand, in GEMM column order
    groups: tuple[tuple[Optional[Op], int], ...]  # (activation, number of slots) runs over the keys
    program: tuple[tuple[Op, int, int, int], ...]
    notes: tuple[str, ...]  # a comment per program row
    num_regs: int
    h_reg: int
    c_reg: int
    names: tuple[str, ...]
    dead: tuple[int, ...]

    @property
    def kernels(self) -> tuple[tuple[Any, int, int, int], ...]:
        return tuple((op.fn, d, a, b) for op, d, a, b in self.program)

    @property
    def group_kernels(self) -> tuple[tuple[Any, int], ...]:
        return tuple((None if op is None else op.fn, n) for op, n in self.groups)


def _operand_text(o: Operand) -> str:
    return f"{o.act}({'W·xh' if o.source == 'xh' else o.source})"


def compile_lstm(g: Genotype, clip: Optional[float]) -> LSTMPlan:
    """Plan of a genotype: live xh slots grouped by activation, then the nodes, with the guard's
    clamps placed by interval analysis (a clamp proven to be a no-op is left out)."""
    live = g.live_nodes()
    # 1. Live xh operands, grouped by activation so each activation is one kernel per step.
    slots: list[tuple[str, int, int]] = []
    for i in live:
        for s, o in enumerate(g.nodes[i - 1].inputs):
            if o.source == "xh":
                slots.append((o.act, i, s))
    slots.sort(key=lambda t: (GROUP_ORDER.index(t[0]), t[1], t[2]))
    keys = tuple((i, s) for _, i, s in slots)
    groups: list[tuple[Optional[Op], int]] = []
    for act in GROUP_ORDER:
        n = sum(1 for a, _, _ in slots if a == act)
        if n:
            # xh pre-activations are unbounded, so identity/relu always get the clamp.
            groups.append((act_op(act, clip, clip is not None), n))
    slot_reg = {key: 1 + r for r, key in enumerate(keys)}
    names = ["c"] + [f"x{r}" for r in range(len(keys))]

    # 2. Nodes in index order (topological), with interval bounds for the guard.
    regs = 1 + len(keys)
    bound: dict[str, float] = {"c": math.inf}  # c_{t-1} comes from outside: assume unbounded
    reg_of: dict[str, int] = {"c": 0}
    derived: dict[tuple[str, str], tuple[int, float]] = {}
    program: list[tuple[Op, int, int, int]] = []
    notes: list[str] = []
    for i in live:
        node = g.nodes[i - 1]
        operand_regs, operand_bounds = [], []
        for s, o in enumerate(node.inputs):
            if o.source == "xh":
                operand_regs.append(slot_reg[(i, s)])
                operand_bounds.append(act_bound(o.act, math.inf, clip, clip is not None))
                continue
            key = (o.source, o.act)
            if key not in derived:  # act(source) computed once per step even if read twice
                src_b = bound[o.source]
                clamp = needs_clamp(o.act, src_b, clip)
                op = act_op(o.act, clip, clamp)
                b = act_bound(o.act, src_b, clip, clamp)
                if op is None:
                    derived[key] = (reg_of[o.source], b)
                else:
                    program.append((op, regs, reg_of[o.source], -1))
                    notes.append(f"{o.act}({o.source})" + (" clamped to the guard" if clamp else ""))
                    names.append(f"{op.name}_{o.source}")
                    derived[key] = (regs, b)
                    regs += 1
            r, b = derived[key]
            operand_regs.append(r)
            operand_bounds.append(b)
        ba, bb = operand_bounds
        program.append((binary_op(node.op), regs, operand_regs[0], operand_regs[1]))
        notes.append(f"{node_ref(i)} = {node.op}({', '.join(_operand_text(o) for o in node.inputs)})")
        names.append(node_ref(i))
        bound[node_ref(i)] = ba + bb if node.op == "add" else ba * bb
        reg_of[node_ref(i)] = regs
        regs += 1
    return LSTMPlan(
        keys=keys,
        groups=tuple(groups),
        program=tuple(program),
        notes=tuple(notes),
        num_regs=regs,
        h_reg=reg_of[g.outputs["h"]],
        c_reg=reg_of[g.outputs["c"]],
        names=tuple(names),
        dead=tuple(i for i in range(1, g.num_nodes + 1) if i not in live),
    )


@functools.lru_cache(maxsize=4096)
def _native_meta(plan: LSTMPlan) -> tuple[list[int], list[int]]:
    """The plan as ``enas_rnn.native``'s lstm loop reads it: one activation code per live xh slot, and
    the program as flat (op code, dst, a, b) rows (add = 10, mul = 11)."""
    slot_acts = [native.ACT_CODES[None if op is None else op.name] for op, n in plan.groups for _ in range(n)]
    prog: list[int] = []
    for op, dst, a, b in plan.program:
        code = {"add": 10, "mul": 11}.get(op.name, None)
        prog += [native.ACT_CODES[op.name] if code is None else code, dst, a, b]
    return slot_acts, prog


def _use_native(plan: LSTMPlan, x: Tensor) -> bool:
    """The C++ loop runs float32 CPU cells that read xh (every useful one), outside torch.compile."""
    return (bool(plan.keys) and x.device.type == "cpu" and x.dtype == torch.float32
            and not torch.compiler.is_compiling() and native.available())


def _native_run(plan: LSTMPlan, xp: Tensor, h0: Tensor, c0: Tensor, mask: Optional[Tensor], w_rec: Tensor,
                clip: Optional[float], keep: bool) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    T, B = xp.shape[0], xp.shape[1]
    H = h0.shape[-1]
    slot_acts, prog = _native_meta(plan)
    R = POOL.empty((T, plan.num_regs, B, H), xp.dtype, xp.device) if keep else None
    out, c_last = xp.new_empty(T, B, H), xp.new_empty(B, H)
    native.ops().lstm_forward(xp, h0.contiguous(), c0.contiguous(), mask, w_rec, slot_acts, prog, plan.num_regs,
                              plan.h_reg, plan.c_reg, 0.0 if clip is None else float(clip), R, out, c_last)
    return out, c_last, R


class _LSTMLoop(torch.autograd.Function):
    """An lstm-space plan's time loop in C++ with a hand-written backward (float32, CPU).

    Forward keeps every step's registers R [T, NR, B, H]; backward runs the program in reverse per
    step (``enas_rnn/native/enas_loop.cpp``) and returns dPre [T, B, kH], the gradient of the k maps'
    pre-activations, from which x_t's part (autograd, outside) and W_rec's gradient (one GEMM over the
    window, here) follow. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx: Any, plan: LSTMPlan, clip: Optional[float], xp: Tensor, h0: Tensor, c0: Tensor,
                mask: Optional[Tensor], w_rec: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        out, c_last, R = _native_run(plan, xp, h0, c0, mask, w_rec, clip, keep=True)
        ctx.plan, ctx.clip = plan, clip
        ctx.save_for_backward(h0, mask, w_rec, out, R)
        return out, c_last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, d_out: Optional[Tensor], d_c: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        plan: LSTMPlan = ctx.plan
        h0, mask, w_rec, out, R = ctx.saved_tensors
        T, B, H = out.shape
        d_out = torch.zeros_like(out) if d_out is None else d_out
        d_c = torch.zeros_like(h0) if d_c is None else d_c
        slot_acts, prog = _native_meta(plan)
        dPre = POOL.empty((T, B, len(slot_acts) * H), out.dtype, out.device)
        d_h0, d_c0 = native.ops().lstm_backward(d_out, d_c, mask, w_rec, slot_acts, prog, plan.num_regs, plan.h_reg,
                                                plan.c_reg, 0.0 if ctx.clip is None else float(ctx.clip), R, dPre)
        need = ctx.needs_input_grad
        d_w = None
        if need[6]:
            h_in = POOL.empty((T, B, H), out.dtype, out.device)  # h_{t-1} for every t, masked
            h_in[0].copy_(h0)
            h_in[1:].copy_(out[:-1])
            if mask is not None:
                h_in.mul_(mask)
            d_w = h_in.view(T * B, H).t().mm(dPre.view(T * B, -1))  # [H, T*B] x [T*B, kH]
        return (None, None, dPre if need[2] else None, d_h0 if need[3] else None, d_c0 if need[4] else None,
                None, d_w)


def run_lstm(
    plan: LSTMPlan, weights: tuple[Tensor, ...], x: Tensor, hidden: Hidden, mask: Tensor | None,
    clip: Optional[float] = None,
) -> tuple[Tensor, Hidden]:
    """Run a plan over a sequence. weights = (w_x [E, kH], w_h [H, kH], bias [kH]).

    One step (k live xh operands, grouped by activation, e.g. vanilla LSTM: g | i f o)::

        xp_t [B, kH] --+
                       +-- addmm --> pre [B, kH] --split by group--> tanh [B, H] | sigmoid [B, 3H]
        h_{t-1} @ W_h -+                                               split(H) -> k x [B, H] operands
        registers: c_{t-1}, operands, act(node) values, node values -> program -> (h_t, c_t)

    For float32 on the CPU the loop runs in C++ (:class:`_LSTMLoop`, ``enas_rnn.native``); this
    autograd loop is the reference and the path for other dtypes, devices, autocast and compile.
    """
    w_x, w_h, bias = weights
    T, B, E = x.shape
    h, c = hidden
    H = h.shape[-1]
    xp = None
    if T > 0 and _use_native(plan, x) and all(t.dtype == torch.float32 for t in (w_x, w_h, bias, h, c)):
        # Hoisted x_t part of every live xh map, bias folded in (autograd): [T*B, E] x [E, kH] -> [T, B, kH].
        xp = torch.addmm(bias, x.reshape(T * B, E), w_x).view(T, B, -1)
    if xp is not None and xp.dtype == torch.float32:  # not under autocast (half-precision GEMMs)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (xp, h, c, w_h)):
            out, c_last = _LSTMLoop.apply(plan, clip, xp, h, c, mask, w_h)
        else:
            out, c_last, _ = _native_run(plan, xp, h, c, mask, w_h, clip, keep=False)
        return out, (out[-1], c_last)
    if plan.keys:
        # Hoisted x_t part of every live xh map, bias folded in: [T*B, E] x [E, kH] -> T x [B, kH].
        xp, w_rec, tape = hoist(x.reshape(T * B, E), w_x, bias, w_h, T, B)
    else:  # a cell that never reads xh: no GEMM at all
        xp, w_rec, tape = (None,) * T, w_h, None
    groups = plan.group_kernels
    widths = [n * H for _, n in groups]
    regs: list[Any] = [None] * plan.num_regs
    program = plan.kernels
    outs = []
    for xp_t in xp:
        regs[0] = c
        if xp_t is not None:
            h_in = h if mask is None else h * mask
            if tape is not None:
                tape.append(h_in.detach())  # detached: no ctx->tape->graph->ctx cycle (leak)
            # The h_{t-1} part of all k live slots in ONE GEMM: [B, H] x [H, kH] -> [B, kH].
            pre = torch.addmm(xp_t, h_in, w_rec)
            chunks = (pre,) if len(groups) == 1 else pre.split(widths, 1)
            pos = 1
            for (fn, n), chunk in zip(groups, chunks):
                v = chunk if fn is None else fn(chunk)  # one kernel per activation group
                if n == 1:
                    regs[pos] = v
                else:
                    regs[pos : pos + n] = v.split(H, 1)  # [B, nH] -> n x [B, H] views
                pos += n
        for fn, dst, a, b in program:
            regs[dst] = fn(regs[a]) if b < 0 else fn(regs[a], regs[b])
        h, c = regs[plan.h_reg], regs[plan.c_reg]
        outs.append(h)
    out = torch.stack(outs) if outs else x.new_empty(0, B, H)
    return out, (h, c)


# ============================================================================ the space
class LSTMSpace(SearchSpace):
    """The ``lstm`` space: per node two (source, act) operands and an op; then the h and c nodes.

    Vanilla LSTM needs 4 nodes; with more, the extra nodes are dead (``encode`` pads).
    """

    name: ClassVar[str] = "lstm"
    inputs: ClassVar[tuple[str, ...]] = INPUTS
    output_names: ClassVar[tuple[str, ...]] = OUTPUT_NAMES
    picture_note: ClassVar[str] = "edge label: activation; (W·) = own affine map of [x_t, h_{t-1}]"
    reference: ClassVar[Optional[str]] = "lstm"
    #: ``memory``: c_t = n1 + c_(t-1) * G is fixed (an additive memory, as the LSTM's constant error carousel).
    #: ``gates``: the whole LSTM skeleton is fixed on the last four nodes; only its gates' sources are searched.
    templates: ClassVar[tuple[str, ...]] = ("none", "memory", "gates")
    named: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        # Vanilla LSTM (Hochreiter & Schmidhuber 1997; gate layout of torch.nn.LSTM):
        #   n1 = i * g, n2 = c_{t-1} * f, c_t = n3 = n1 + n2, h_t = n4 = tanh(c_t) * o.
        "lstm": {
            "space": "lstm",
            "nodes": [
                {"op": "mul", "inputs": [["xh", "sigmoid"], ["xh", "tanh"]]},
                {"op": "mul", "inputs": [["c", "identity"], ["xh", "sigmoid"]]},
                {"op": "add", "inputs": [["n1", "identity"], ["n2", "identity"]]},
                {"op": "mul", "inputs": [["n3", "tanh"], ["xh", "sigmoid"]]},
            ],
            "outputs": {"h": "n4", "c": "n3"},
            "source": "Hochreiter & Schmidhuber 1997; gate order of torch.nn.LSTM (i, f, g, o)",
        },
    }

    # ------------------------------------------------------------------ genotype semantics
    @classmethod
    def parse_node(cls, raw: Any, index: int) -> LSTMNode:
        where = f"node {node_ref(index)}"
        if isinstance(raw, LSTMNode):
            return raw
        if not isinstance(raw, Mapping):
            raise _err(where, f"expected an lstm node {{'op', 'inputs'}}, got {raw!r}")
        missing = [k for k in ("op", "inputs") if k not in raw]
        if missing:
            raise _err(where, f"missing key(s) {missing}; an lstm node needs 'op' and 'inputs'")
        inputs = raw["inputs"]
        if isinstance(inputs, str) or not isinstance(inputs, Sequence) or len(inputs) != 2:
            raise _err(where, f"'inputs' must hold exactly 2 operands, got {inputs!r}")
        ops = tuple(_coerce_operand(o, f"{where} operand {k + 1}") for k, o in enumerate(inputs))
        return LSTMNode(str(raw["op"]), (ops[0], ops[1]))

    @classmethod
    def validate(cls, g: Genotype) -> None:
        for i, node in enumerate(g.nodes, start=1):
            where = f"node {node_ref(i)}"
            if not isinstance(node, LSTMNode):
                raise _err(where, f"{node!r} is not an lstm node")
            valid = list(INPUTS) + [node_ref(j) for j in range(1, i)]
            if node.op not in OPS:
                raise _err(where, f"unknown op {node.op!r}; valid ops: {options(OPS)}")
            for k, operand in enumerate(node.inputs, start=1):
                if operand.source not in valid:
                    raise _err(where, f"operand {k} source {operand.source!r} is not an input or an earlier "
                                      f"node; valid sources: {options(valid)}")
                if operand.act not in ACTIVATIONS:
                    raise _err(where, f"operand {k} activation {operand.act!r} is unknown; "
                                      f"valid activations: {options(ACTIVATIONS)}")
        refs = [node_ref(j) for j in range(1, g.num_nodes + 1)]
        keys = set(g.outputs)
        if keys != set(OUTPUT_NAMES):
            raise GenotypeError(f"outputs: keys {sorted(keys)} are not valid; an lstm genotype needs exactly "
                                f"{list(OUTPUT_NAMES)}, e.g. {{'h': 'n4', 'c': 'n3'}}")
        for key in OUTPUT_NAMES:
            if g.outputs[key] not in refs:
                raise GenotypeError(f"outputs: {key} -> {g.outputs[key]!r} is not a node; valid: {options(refs)}")

    @classmethod
    def live_nodes(cls, g: Genotype) -> tuple[int, ...]:
        """Nodes reachable backwards from the h and c outputs."""
        live: set[int] = set()
        stack = [parse_node_ref(g.outputs[k]) for k in OUTPUT_NAMES]
        while stack:
            i = stack.pop()
            if i is None or i in live:
                continue
            live.add(i)
            stack.extend(parse_node_ref(s) for s in g.node_sources(i))
        return tuple(sorted(live))

    @classmethod
    def canonical(cls, g: Genotype) -> Genotype:
        """Dead nodes dropped, nodes renumbered in a canonical topological order and the two operands
        of each (commutative) op sorted. Nodes are ordered by (depth, structural signature); nodes
        tied on that key are structurally identical and independent, and the lexicographically
        smallest spelling over their permutations is kept (exact up to ``_MAX_TIE_PERMUTATIONS``)."""
        live = g.live_nodes()
        depth: dict[str, int] = {s: 0 for s in INPUTS}
        sig: dict[str, str] = {s: s for s in INPUTS}
        for i in live:  # ascending index is a topological order
            node = g.nodes[i - 1]
            ref = node_ref(i)
            depth[ref] = 1 + max(depth[o.source] for o in node.inputs)
            # Bottom-up structural signature; operands sorted because add and mul commute.
            # Hashed so that signatures stay short however much the DAG shares sub-terms.
            ops = sorted(f"{o.act}:{sig[o.source]}" for o in node.inputs)
            sig[ref] = _digest(f"{node.op}({ops[0]},{ops[1]})")

        def tie_key(i: int) -> tuple[int, str]:
            return depth[node_ref(i)], sig[node_ref(i)]

        groups = [list(grp) for _, grp in itertools.groupby(sorted(live, key=tie_key), key=tie_key)]
        n_perm = math.prod(math.factorial(len(grp)) for grp in groups)
        if n_perm > _MAX_TIE_PERMUTATIONS:
            candidates: Any = iter([tuple(tuple(grp) for grp in groups)])
        else:
            candidates = itertools.product(*(itertools.permutations(grp) for grp in groups))
        best: tuple[str, Genotype] | None = None
        for combo in candidates:
            cand = _renumber(g, [i for grp in combo for i in grp])
            text = json.dumps(cand.core_dict(), sort_keys=True)
            if best is None or text < best[0]:
                best = (text, cand)
        assert best is not None
        return best[1]

    @classmethod
    def analyse(cls, g: Genotype) -> CellAnalysis:
        """Exact dependence analysis with the state starting at zero.

        Every value gets three flags: always zero (Z), depends on x_t or h_{t-1} through an xh map
        (X), depends on c_{t-1} (C). An xh operand is (not Z, X). act(v) of a value that is always
        zero is zero for identity/tanh/relu and the constant 1/2 for sigmoid; add is zero when both
        sides are, mul when either is (a product with 0 is 0). With c_0 = 0, c_{t-1} is always zero
        iff the c node computed from c = 0 is zero; c carries the input's history iff the c node
        depends on an xh map. Weights are generic (no exact cancellation: the space has no
        negation, and sums of independent maps do not cancel), so the flags are exact; a test checks
        them against numeric probes on thousands of random cells.

        Boundedness (worst case over the weights, guard off, any starting state; ``enas_rnn.spaces.growth``):
        every value is bounded by a polynomial in C = |c_(t-1)| and H = |h_(t-1)| (sup norms) whose
        coefficients may be ``inf`` (a number the weights can make arbitrarily large):

        * an xh operand's pre-activation W[x_t; h_(t-1)] + b: inf + inf*H (weights, bias and the
          bounded input are arbitrary);
        * tanh and sigmoid: the constant 1, whatever they read (sigmoid of an exact 0 is 1/2, tanh of
          it 0); identity and relu keep the bound (|relu(v)| <= |v|);
        * add sums the bounds, mul multiplies them (|a*b| <= |a| |b|, elementwise);
        * c_(t-1): C, or exactly 0 where the degeneracy analysis proves c always zero (from the zero start).

        The h and c nodes' bounds are the recurrence H' <= P_h(C, H), C' <= P_c(C, H), which
        ``growth.classify`` sorts into bounded / linear / unbounded. nn.LSTM: C' <= 1 + C (f*c: 1*C,
        i*g: 1*1) is linear, H' <= 1 (o*tanh(c_t)) bounded; the cell is "linear", never
        "unbounded". c_t = c + c (C' <= 2C) or h_t = relu(W·xh) (H' <= inf*H) are unbounded. The
        rules only give upper bounds, so a cell called bounded or linear is one (sound); a cell called
        unbounded explodes for some weights unless the bound is loose (a test drives the classes
        numerically with large weights and long sequences).
        """
        h_ref, c_ref = g.outputs["h"], g.outputs["c"]
        zero_c, live_c = _flags(g.nodes, True), _flags(g.nodes, False)
        c_zero, depends, has_memory = _verdict(zero_c, live_c, h_ref, c_ref)
        val = zero_c if c_zero else live_c
        memory_input = val[c_ref][1]  # c_t depends on an xh map: c carries the input's history
        z_h, _, c_h = val[h_ref]
        out_reason = mem_reason = ""
        if not depends:
            if z_h:
                out_reason = (f"h_t = {h_ref} is always 0: the state starts at 0, identity/tanh/relu keep 0 at 0 "
                              "and a product with 0 is 0")
            elif c_h:
                out_reason = f"h_t = {h_ref} reads only c_(t-1), and c_t never depends on the input"
            else:
                out_reason = f"h_t = {h_ref} is a constant: it reads no input"
        if not has_memory:
            if c_zero:
                mem_reason = f"c_t = {c_ref} is always 0: the memory never leaves its zero start"
            elif not memory_input:
                mem_reason = f"c_t = {c_ref} never depends on the input (a function of its own past only)"
            else:
                mem_reason = f"h_t = {h_ref} never reads c_(t-1): the memory is computed but never used"
        growth_h, growth_c, why = _growth(_bounds(g.nodes, c_zero), h_ref, c_ref)
        return CellAnalysis(depends, has_memory, out_reason, mem_reason, worst((growth_h, growth_c)), growth_h,
                            growth_c, why)

    @classmethod
    def formula(cls, g: Genotype) -> list[str]:
        live = set(g.live_nodes())
        out = []
        for i, node in enumerate(g.nodes, 1):
            sym = " + " if node.op == "add" else " * "
            out.append(f"{node_ref(i)} = {sym.join(_operand_text(o) for o in node.inputs)}"
                       + ("" if i in live else "   (dead)"))
        out.append(f"h_t = {g.outputs['h']}, c_t = {g.outputs['c']}")
        return out

    @classmethod
    def structure(cls, g: Genotype) -> tuple[dict[str, str], list[str], list[tuple[str, str, str]]]:
        live = g.live_nodes()
        nodes = {node_ref(i): g.nodes[i - 1].op for i in live}
        edges = [(o.source, node_ref(i), o.act) for i in live for o in g.nodes[i - 1].inputs]
        edges += [(g.outputs["h"], "out_h", ""), (g.outputs["c"], "out_c", "")]
        return nodes, ["xh", "c", "out_h", "out_c"], edges

    @classmethod
    def graph(cls, g: Genotype) -> tuple[list[GraphBox], list[GraphEdge]]:
        boxes = [GraphBox("xh", "x_t, h_{t-1}", "input", 0), GraphBox("c", "c_{t-1}", "input", 0)]
        edges: list[GraphEdge] = []
        depth = {"xh": 0, "c": 0}
        for i in g.live_nodes():
            node = g.nodes[i - 1]
            ref = node_ref(i)
            depth[ref] = 1 + max(depth[o.source] for o in node.inputs)
            boxes.append(GraphBox(ref, f"{ref}\n{'+' if node.op == 'add' else '×'} ({node.op})", "node", depth[ref]))
            for o in node.inputs:
                edges.append(GraphEdge(o.source, ref, o.act + (" (W·)" if o.source == "xh" else ""), o.act))
        last = 1 + max(depth[node_ref(i)] for i in g.live_nodes())
        for out in OUTPUT_NAMES:
            boxes.append(GraphBox(f"out_{out}", f"{out}_t", "output", last))
            edges.append(GraphEdge(g.outputs[out], f"out_{out}", "", None))
        return boxes, edges

    # ------------------------------------------------------------------ execution
    @classmethod
    def bank_layout(cls, input_size: int, hidden_size: int, rows: int) -> dict[str, tuple[tuple[int, ...], Optional[int]]]:
        E, H = input_size, hidden_size
        return {"w_x": ((E, rows, H), 1), "w_h": ((H, rows, H), 1), "bias": ((rows, H), 0)}

    @classmethod
    def shared_num_rows(cls, num_nodes: int) -> int:
        return 2 * num_nodes  # one row per (node, operand slot)

    @classmethod
    def shared_row(cls, key: tuple[int, int]) -> int:
        i, s = key
        return (i - 1) * 2 + s

    @classmethod
    def compile(cls, g: Genotype, clip: Optional[float]) -> LSTMPlan:
        return compile_lstm(g, clip)

    @classmethod
    def gather(cls, plan: LSTMPlan, banks: Mapping[str, Tensor], rows: Any, input_size: int,
               hidden_size: int) -> tuple[Tensor, ...]:
        # The live slots once per forward: [E, S, H] -> [E, k, H] -> [E, kH].
        k, E, H = len(plan.keys), input_size, hidden_size
        return (take(banks["w_x"], 1, rows).reshape(E, k * H), take(banks["w_h"], 1, rows).reshape(H, k * H),
                take(banks["bias"], 0, rows).reshape(k * H))

    run = staticmethod(run_lstm)

    @classmethod
    def export_parts(cls, plan: LSTMPlan, g: Genotype, clip: Optional[float]) -> ExportParts:
        K = len(plan.keys)
        params = [
            "# One row r per live xh operand: x_t @ w_x[:, r] + h_(t-1) @ w_h[:, r] + bias[r] = W[x_t; h_(t-1)] + b.",
            f"self.w_x = nn.Parameter(torch.empty(input_size, {K}, hidden_size))",
            f"self.w_h = nn.Parameter(torch.empty(hidden_size, {K}, hidden_size))",
            f"self.bias = nn.Parameter(torch.empty({K}, hidden_size))",
        ]
        project = [
            "T, B, E = x.shape",
            f"KH = {K} * self.hidden_size",
            "# [T*B, E] x [E, K*H] + bias -> [T*B, K*H] -> [T, B, K*H]",
            "return torch.addmm(self.bias.reshape(KH), x.reshape(T * B, E), self.w_x.reshape(E, KH)).view(T, B, KH)",
        ]
        weights = ["H = self.hidden_size", f"return (self.w_h.reshape(H, {K} * H),)  # [H, K, H] -> [H, K*H]"]
        step = ["H = self.hidden_size", "(w_h,) = w"]
        if plan.dead:
            step.append("# dead nodes (reach neither h_t nor c_t, not computed): "
                        + ", ".join(node_ref(i) for i in plan.dead))
        n = plan.names
        if K:
            step.append("pre = torch.addmm(xp_t, h, w_h)  # [B, K*H]: W[x_t; h_(t-1)] + b of every xh operand")
            pos = 0
            for op, count in plan.groups:
                chunk = f"pre[:, {pos} * H:{pos + count} * H]"
                expr = chunk if op is None else op.code.format(a=chunk)
                targets = [n[1 + pos + j] for j in range(count)]
                if count == 1:
                    step.append(f"{targets[0]} = {expr}")
                else:
                    step.append(f"{', '.join(targets)} = {expr}.split(H, 1)  # one kernel for the group")
                pos += count
        else:
            step.append("# no operand reads xh: h_(t-1) is not used")
        for (op, dst, a, b), note in zip(plan.program, plan.notes):
            step.append(f"{n[dst]} = {op.code.format(a=n[a], b=n[b] if b >= 0 else '')}  # {note}")
        step.append(f"return {n[plan.h_reg]}, {n[plan.c_reg]}  # h_t = {g.outputs['h']}, c_t = {g.outputs['c']}")
        layout = ["# Weight rows of the xh operands (w_x[:, r], w_h[:, r], bias[r]):"] if K else []
        for r, (i, s) in enumerate(plan.keys):
            layout.append(f"#   row {r} (x{r}): {node_ref(i)} operand {s + 1} ({g.nodes[i - 1].inputs[s].act})")
        return ExportParts(params, project, weights, ["return h, c  # lstm space: the guard clamps operands inside the step"],
                           step, layout)

    # ------------------------------------------------------------------ decisions
    def __init__(self, num_nodes: int = 8, template: str = "none") -> None:
        if template == "memory" and int(num_nodes) < 3:
            raise ValueError(f"lstm space: template 'memory' fixes n1..n3 (i*g, c*f, c_t) and needs num_nodes >= 3, "
                             f"got {num_nodes}")
        if template == "gates" and int(num_nodes) < 4:
            raise ValueError(f"lstm space: template 'gates' fixes the last four nodes (i*g, c*f, c_t, h_t) and needs "
                             f"num_nodes >= 4, got {num_nodes}")
        super().__init__(num_nodes, template)

    def _sources(self, i: int) -> tuple[str, ...]:
        return INPUTS + tuple(node_ref(j) for j in range(1, i))

    def _kinds(self) -> list[str]:
        """What each node's decisions are: ``free`` (two operands and an op), ``input`` (template n1 = i * g:
        two xh operands' activations and the op), ``gate`` (template n2 = identity(c) * G: G's source, xh or n1,
        and its squashing activation) or ``fixed`` (template n3 = n1 + n2, no decision); with ``gates``
        the free nodes come first and the skeleton's nodes are ``gate_i``, ``gate_f``, ``fixed``, ``gate_o``
        (one decision each: the gate's source)."""
        if self.template == "memory":
            return ["input", "gate", "fixed"] + ["free"] * (self.num_nodes - 3)
        if self.template == "gates":
            return ["free"] * (self.num_nodes - 4) + ["gate_i", "gate_f", "fixed", "gate_o"]
        return ["free"] * self.num_nodes

    def _gate_sources(self) -> tuple[str, ...]:
        """template=gates: what a gate may read - xh (its own map), c_(t-1), or a free node."""
        return INPUTS + tuple(node_ref(j) for j in range(1, self.num_nodes - 3))

    def _build_decisions(self) -> list[Decision]:
        out: list[Decision] = []
        for i, kind in enumerate(self._kinds(), 1):
            srcs = self._sources(i)
            if kind == "free":
                for slot in ("a", "b"):
                    out.append(Decision(f"n{i}.src_{slot}", len(srcs), "source", srcs))
                    out.append(Decision(f"n{i}.act_{slot}", len(ACTIVATIONS), "act", ACTIVATIONS))
                out.append(Decision(f"n{i}.op", len(OPS), "op", OPS))
            elif kind == "input":
                out.append(Decision(f"n{i}.act_a", len(ACTIVATIONS), "act", ACTIVATIONS))
                out.append(Decision(f"n{i}.act_b", len(ACTIVATIONS), "act", ACTIVATIONS))
                out.append(Decision(f"n{i}.op", len(OPS), "op", OPS))
            elif kind == "gate":
                out.append(Decision(f"n{i}.src_g", len(GATE_SOURCES), "source", GATE_SOURCES))
                out.append(Decision(f"n{i}.act_g", len(GATE_ACTS), "act", GATE_ACTS))
            elif kind.startswith("gate_"):
                srcs = self._gate_sources()
                out.append(Decision(f"n{i}.src_{kind[-1]}", len(srcs), "source", srcs))
        if self.template == "gates":  # h_t and c_t are the skeleton's
            return out
        nodes = tuple(node_ref(j) for j in range(1, self.num_nodes + 1))
        out.append(Decision("out.h", self.num_nodes, "output", nodes))
        if self.template == "none":
            out.append(Decision("out.c", self.num_nodes, "output", nodes))
        return out

    @property
    def _num_outputs(self) -> int:
        return {"none": 2, "memory": 1}.get(self.template, 0)

    def _decode_nodes(self, values: Sequence[int]) -> tuple[LSTMNode, ...]:
        """The nodes from the node decisions (every decision before the outputs)."""
        it = iter(values)
        nodes = []
        for i, kind in enumerate(self._kinds(), 1):
            srcs = self._sources(i)
            if kind == "free":
                operands = []
                for _ in range(2):
                    src = srcs[next(it)]
                    operands.append(Operand(src, ACTIVATIONS[next(it)]))
                nodes.append(LSTMNode(OPS[next(it)], (operands[0], operands[1])))
            elif kind == "input":  # i * g: two maps of x_t, h_{t-1} (so c_t always carries the input)
                a, b = Operand("xh", ACTIVATIONS[next(it)]), Operand("xh", ACTIVATIONS[next(it)])
                nodes.append(LSTMNode(OPS[next(it)], (a, b)))
            elif kind == "gate":  # the forget gate's product: c_{t-1} * G, G squashed (|G| <= 1: no blow-up)
                gate = Operand(GATE_SOURCES[next(it)], GATE_ACTS[next(it)])
                nodes.append(LSTMNode("mul", (Operand("c", "identity"), gate)))
            elif kind == "gate_i":  # i * g: the LSTM's signed candidate tanh(W·xh)
                gate = Operand(self._gate_sources()[next(it)], "sigmoid")
                nodes.append(LSTMNode("mul", (gate, Operand("xh", "tanh"))))
            elif kind == "gate_f":  # c_{t-1} * f
                gate = Operand(self._gate_sources()[next(it)], "sigmoid")
                nodes.append(LSTMNode("mul", (Operand("c", "identity"), gate)))
            elif kind == "gate_o":  # h_t = tanh(c_t) * o
                gate = Operand(self._gate_sources()[next(it)], "sigmoid")
                nodes.append(LSTMNode("mul", (Operand(node_ref(i - 1), "tanh"), gate)))
            elif self.template == "gates":  # c_t = i * g + c_{t-1} * f
                a, b = node_ref(i - 2), node_ref(i - 1)
                nodes.append(LSTMNode("add", (Operand(a, "identity"), Operand(b, "identity"))))
            else:  # c_t = n1 + n2: the identity path that carries c_{t-1} (the constant error carousel)
                nodes.append(LSTMNode("add", (Operand("n1", "identity"), Operand("n2", "identity"))))
        return tuple(nodes)

    def decode(self, choices: Sequence[int]) -> Genotype:
        values = self._check_choices(choices)
        k = len(values) - self._num_outputs
        nodes = self._decode_nodes(values[:k])
        if self.template == "gates":
            return Genotype("lstm", nodes, {"h": node_ref(self.num_nodes), "c": node_ref(self.num_nodes - 1)})
        h = node_ref(values[k] + 1)
        c = node_ref(values[k + 1] + 1) if self.template == "none" else "n3"
        return Genotype("lstm", nodes, {"h": h, "c": c})

    def allowed(self, prefix: Sequence[int], require_memory: bool = True, require_bounded: bool = False,
                exclude_degenerate: bool = True) -> Optional[list[bool]]:
        """Constrained decoding: the choices of decision ``len(prefix)`` that can still give a cell that is
        not degenerate (``exclude_degenerate``) and, with ``require_bounded``, not unbounded. Only the
        output decisions are restricted (the nodes are decided by then; with ``template=memory`` only
        out.h, c_t being n3). None when every choice is allowed, or when no choice is (the caller then
        redraws the cell)."""
        D, n_out = len(self._decisions), self._num_outputs
        if self.template == "gates":
            return None  # every cell is an LSTM with computed gates: has memory, reads x_t, at worst linear
        if len(prefix) < D - n_out or not (exclude_degenerate or require_bounded):
            return None
        nodes = self._decode_nodes(prefix[: D - n_out])
        flags = (bool(require_memory) and exclude_degenerate, bool(require_bounded), bool(exclude_degenerate))
        if self.template != "none":  # c_t is n3
            mask = [row[0] for row in _pair_table(nodes, *flags, columns=(2,))]
            return mask if any(mask) and not all(mask) else None
        table = _pair_table(nodes, *flags)
        if len(prefix) == D - 2:
            mask = [any(row) for row in table]
        else:
            mask = list(table[prefix[D - 2]])
        return mask if any(mask) and not all(mask) else None

    def pad(self, genotype: Genotype) -> Genotype:
        """Append dead nodes so ``genotype`` has exactly ``num_nodes`` nodes (same cell)."""
        self._check_genotype(genotype)
        extra = self.num_nodes - genotype.num_nodes
        if extra < 0:
            raise GenotypeError(f"genotype has {genotype.num_nodes} nodes; the lstm space has only {self.num_nodes}")
        # A dead filler node: nothing reads it and it is not an output, so it costs nothing.
        filler = LSTMNode("add", (Operand("xh", "identity"), Operand("xh", "identity")))
        return Genotype("lstm", genotype.nodes + (filler,) * extra, genotype.outputs)

    def encode(self, genotype: Genotype) -> list[int]:
        """Choices for ``genotype``; fewer nodes than the space are padded with dead nodes,
        so then ``decode(encode(g)) == self.pad(g)`` (same canonical cell). With ``template=memory`` the
        genotype must be spelled as the template (n2 = identity(c) * G, n3 = identity(n1) + identity(n2),
        c_t = n3): ``GenotypeError`` says where it differs. With ``template=gates`` any numbering of an LSTM
        skeleton fits (its free nodes are renumbered n1..; ``decode(encode(g))`` has the same canonical form)."""
        if self.template == "gates":
            return self._encode_gates(genotype)
        g = self.pad(genotype)
        fixed = self._decode_nodes([0] * (len(self._decisions) - self._num_outputs))
        out: list[int] = []
        for i, (node, kind) in enumerate(zip(g.nodes, self._kinds()), start=1):
            srcs = self._sources(i)
            if kind == "free":
                for operand in node.inputs:
                    out += [srcs.index(operand.source), ACTIVATIONS.index(operand.act)]
                out.append(OPS.index(node.op))
                continue
            if kind == "input":
                if any(o.source != "xh" for o in node.inputs):
                    raise self._misfit(f"node n{i} must combine two maps of xh (i * g), got {_node_text(node)}")
                out += [ACTIVATIONS.index(o.act) for o in node.inputs] + [OPS.index(node.op)]
                continue
            if kind == "gate" and (node.op != "mul" or node.inputs[0] != Operand("c", "identity")
                                   or node.inputs[1].source not in GATE_SOURCES or node.inputs[1].act not in GATE_ACTS):
                raise self._misfit(f"node n{i} must be identity(c) * G with G = {' or '.join(GATE_ACTS)} of "
                                   f"{' or '.join(GATE_SOURCES)} (the forget gate's product, c_(t-1) first), "
                                   f"got {_node_text(node)}")
            if kind == "gate":
                out += [GATE_SOURCES.index(node.inputs[1].source), GATE_ACTS.index(node.inputs[1].act)]
            elif node != fixed[i - 1]:
                raise self._misfit(f"node n{i} must be identity(n1) + identity(n2) (c_t), got {_node_text(node)}")
        out.append(int(g.outputs["h"][1:]) - 1)
        if self.template == "none":
            out.append(int(g.outputs["c"][1:]) - 1)
        elif g.outputs["c"] != "n3":
            raise self._misfit(f"c_t must be n3 (= n1 + n2), got c_t = {g.outputs['c']}")
        return out

    def _encode_gates(self, genotype: Genotype) -> list[int]:
        """template=gates: find the skeleton from the outputs (h_t = tanh(c_t) * sigmoid(S_o), c_t = i * g +
        c_(t-1) * f with i * g = sigmoid(S_i) * tanh(xh), c_(t-1) * f = identity(c) * sigmoid(S_f)); the nodes
        the gates read become the free nodes n1.. in their order."""
        self._check_genotype(genotype)
        g, n_free = genotype, self.num_nodes - 4

        def at(ref: str) -> LSTMNode:
            return g.nodes[parse_node_ref(ref) - 1]

        def gate(node: LSTMNode, fixed: Operand) -> Optional[Operand]:
            """The sigmoid operand of ``fixed * sigmoid(S)``, or None when ``node`` is not that product."""
            a, b = node.inputs
            if node.op == "mul" and a == fixed and b.act == "sigmoid":
                return b
            if node.op == "mul" and b == fixed and a.act == "sigmoid":
                return a
            return None

        h_ref, c_ref = g.outputs["h"], g.outputs["c"]
        s_o = gate(at(h_ref), Operand(c_ref, "tanh"))
        if s_o is None:
            raise self._misfit(f"h_t = {h_ref} must be tanh(c_t) * sigmoid(S_o), got {_node_text(at(h_ref))}")
        c_node = at(c_ref)
        parts = [o.source for o in c_node.inputs]
        if c_node.op != "add" or any(o.act != "identity" or o.source in INPUTS for o in c_node.inputs):
            raise self._misfit(f"c_t = {c_ref} must be identity(i * g) + identity(c * f), got {_node_text(c_node)}")
        found: dict[str, tuple[str, Operand]] = {}
        for ref in parts:
            for name, fixed in (("i", Operand("xh", "tanh")), ("f", Operand("c", "identity"))):
                s = gate(at(ref), fixed)
                if s is not None and name not in found:
                    found[name] = (ref, s)
                    break
        if set(found) != {"i", "f"}:
            raise self._misfit(f"c_t = {c_ref} must add sigmoid(S_i) * tanh(xh) and identity(c) * sigmoid(S_f), "
                               f"got {' + '.join(_node_text(at(r)) for r in parts)}")
        sources = {"i": found["i"][1].source, "f": found["f"][1].source, "o": s_o.source}
        skeleton = {h_ref, c_ref, found["i"][0], found["f"][0]}
        free: set[int] = set()
        stack = [parse_node_ref(s) for s in sources.values() if s not in INPUTS]
        while stack:
            i = stack.pop()
            if node_ref(i) in skeleton:
                raise self._misfit(f"a gate reads {node_ref(i)}, a node of the skeleton; gates read xh, c or free nodes")
            if i not in free:
                free.add(i)
                stack.extend(parse_node_ref(s) for s in g.node_sources(i) if s not in INPUTS)
        if len(free) > n_free:
            raise self._misfit(f"the gates read {len(free)} free nodes; {self.num_nodes} nodes leave room for {n_free}")
        new_ref = {node_ref(old): node_ref(k) for k, old in enumerate(sorted(free), 1)}
        out: list[int] = []
        for k, old in enumerate(sorted(free), 1):
            srcs = self._sources(k)
            for o in g.nodes[old - 1].inputs:
                out += [srcs.index(new_ref.get(o.source, o.source)), ACTIVATIONS.index(o.act)]
            out.append(OPS.index(g.nodes[old - 1].op))
        filler = [0, 0, 0, 0, 0]  # add(identity(xh), identity(xh)): a dead node
        out += filler * (n_free - len(free))
        allowed_sources = self._gate_sources()
        out += [allowed_sources.index(new_ref.get(sources[k], sources[k])) for k in GATES]
        return out

    def _misfit(self, why: str) -> GenotypeError:
        return GenotypeError(f"the genotype does not fit space.template={self.template}: {why}")


def _node_text(node: LSTMNode) -> str:
    return (" + " if node.op == "add" else " * ").join(_operand_text(o) for o in node.inputs)


Flags = dict[str, tuple[bool, bool, bool]]


def _flags(nodes: Sequence[LSTMNode], c_zero: bool) -> Flags:
    """(always zero, depends on an xh map, depends on c_{t-1}) of every node, given whether c_{t-1} is
    always zero (see LSTMSpace.analyse). Nodes only read earlier nodes, so one pass in index order."""
    val = {"c": (c_zero, False, not c_zero)}
    for i, node in enumerate(nodes, 1):
        ops = []
        for o in node.inputs:
            if o.source == "xh":
                ops.append((False, True, False))
                continue
            z, dx, dc = val[o.source]
            # act(0) is 0 for identity/tanh/relu and a constant 1/2 for sigmoid.
            ops.append((o.act in ZERO_PRESERVING, False, False) if z else (False, dx, dc))
        (za, xa, ca), (zb, xb, cb) = ops
        if node.op == "add":
            val[node_ref(i)] = (za and zb, xa or xb, ca or cb)
        else:
            z = za or zb
            val[node_ref(i)] = (z, not z and (xa or xb), not z and (ca or cb))
    return val


def _verdict(zero_c: Flags, live_c: Flags, h: str, c: str) -> tuple[bool, bool, bool]:
    """(c_{t-1} always zero, h_t depends on the input, working memory) for outputs h and c.

    c_1 computed from c_0 = 0 is zero iff c stays zero forever; otherwise the flags with c nonzero hold."""
    c_zero = zero_c[c][0]
    val = zero_c if c_zero else live_c
    memory_input = val[c][1]
    _, x_h, c_h = val[h]
    return c_zero, x_h or (c_h and memory_input), memory_input and c_h


@functools.lru_cache(maxsize=4096)
def _pair_table(nodes: tuple[LSTMNode, ...], require_memory: bool, require_bounded: bool, exclude_degenerate: bool,
                columns: Optional[tuple[int, ...]] = None) -> tuple[tuple[bool, ...], ...]:
    """ok[h][c]: whether outputs h_t = n(h+1), c_t = n(c+1) (``columns``: only those c) give a cell that is
    not degenerate (``exclude_degenerate``) and, with ``require_bounded``, not unbounded. Cached: a
    controller draw asks for its two output decisions with the same nodes."""
    zero_c, live_c = _flags(nodes, True), _flags(nodes, False)
    bounds: dict[bool, dict[str, Poly]] = {}
    refs = [node_ref(j) for j in range(1, len(nodes) + 1)]
    cols = [refs[k] for k in columns] if columns is not None else refs
    rows = []
    for h in refs:
        row = []
        for c in cols:
            c_zero, depends, memory = _verdict(zero_c, live_c, h, c)
            ok = not exclude_degenerate or (depends and (memory or not require_memory))
            if ok and require_bounded:
                if c_zero not in bounds:
                    bounds[c_zero] = _bounds(nodes, c_zero)
                ok = worst(_growth(bounds[c_zero], h, c)[:2]) != "unbounded"
            row.append(ok)
        rows.append(tuple(row))
    return tuple(rows)


# Variables of the boundedness analysis: exponent 0 is |c_(t-1)|, exponent 1 is |h_(t-1)|.
_C, _H = 0, 1
_XH: Poly = padd(pconst(math.inf, 2), pvar(_H, math.inf, 2))  # |W[x_t; h_(t-1)] + b| <= inf + inf*H
_ONE: Poly = pconst(1.0, 2)


def _act_bound(act: str, p: Poly) -> Poly:
    """Bound of act(v) from the bound of v (see LSTMSpace.analyse)."""
    if act in BOUNDED:
        if not p:  # v is exactly 0: tanh(0) = 0, sigmoid(0) = 1/2
            return pconst(0.5, 2) if act == "sigmoid" else {}
        return _ONE
    return p  # identity, relu: |relu(v)| <= |v|


def _bounds(nodes: Sequence[LSTMNode], c_zero: bool) -> dict[str, Poly]:
    """|value| <= P(|c_(t-1)|, |h_(t-1)|) for every node; c_(t-1) is exactly 0 when ``c_zero``."""
    val: dict[str, Poly] = {"c": {} if c_zero else pvar(_C, 1.0, 2)}
    for i, node in enumerate(nodes, 1):
        a, b = (_act_bound(o.act, _XH if o.source == "xh" else val[o.source]) for o in node.inputs)
        val[node_ref(i)] = padd(a, b) if node.op == "add" else pmul(a, b)
    return val


def _freeze(p: Poly) -> tuple[tuple[tuple[int, ...], float], ...]:
    return tuple(sorted(p.items()))


@functools.lru_cache(maxsize=65536)
def _classify_frozen(p_c: tuple, p_h: tuple, h_ref: str, c_ref: str) -> tuple[str, str, str]:
    names = [f"c_t = {c_ref}", f"h_t = {h_ref}"]
    growth = classify([dict(p_c), dict(p_h)], names)
    (gc, gh), (rc, rh) = growth.classes, growth.reasons
    cell = worst((gh, gc))
    pairs = ((gh, rh),) if h_ref == c_ref else ((gh, rh), (gc, rc))  # one node is both: say it once
    why = "; ".join(dict.fromkeys(r for cls, r in pairs if cls == cell and r))
    return gh, gc, why


def _growth(bounds: Mapping[str, Poly], h_ref: str, c_ref: str) -> tuple[str, str, str]:
    """(class of h, class of c, why the worse one is not bounded) for outputs h and c."""
    return _classify_frozen(_freeze(bounds[c_ref]), _freeze(bounds[h_ref]), h_ref, c_ref)


def _renumber(g: Genotype, order: Sequence[int]) -> Genotype:
    new_ref = {node_ref(old): node_ref(pos + 1) for pos, old in enumerate(order)}
    nodes = []
    for old in order:
        node = g.nodes[old - 1]
        ops = sorted((Operand(new_ref.get(o.source, o.source), o.act) for o in node.inputs), key=_operand_key)
        nodes.append(LSTMNode(node.op, (ops[0], ops[1])))
    return Genotype("lstm", tuple(nodes), Outputs({k: new_ref[g.outputs[k]] for k in OUTPUT_NAMES}))


# Gate order of torch.nn.LSTM's weight_ih/weight_hh rows.
_NN_LSTM_ORDER: tuple[str, ...] = ("i", "f", "g", "o")


def nn_lstm_gates(g: Genotype) -> dict[str, tuple[int, int]]:
    """Where each gate of a vanilla-LSTM genotype lives, ``{gate: (node, operand slot)}`` (node 1-based), for
    any numbering and operand order of the cell (the named ``lstm`` one, template=gates' spelling, ...)."""
    if g.space != "lstm" or g.canonical() != Genotype.from_dict(LSTMSpace.named["lstm"]).canonical():
        raise ValueError("not a vanilla LSTM: its canonical form differs from the named 'lstm' cell's")
    c_ref, h_ref = g.outputs["c"], g.outputs["h"]

    def slot(i: int, operand: Operand) -> tuple[int, int]:
        return i, list(g.nodes[i - 1].inputs).index(operand)

    gates = {"o": slot(parse_node_ref(h_ref), Operand("xh", "sigmoid"))}
    for o in g.nodes[parse_node_ref(c_ref) - 1].inputs:
        i = parse_node_ref(o.source)
        if Operand("c", "identity") in g.nodes[i - 1].inputs:
            gates["f"] = slot(i, Operand("xh", "sigmoid"))
        else:
            gates["i"], gates["g"] = slot(i, Operand("xh", "sigmoid")), slot(i, Operand("xh", "tanh"))
    return gates


def copy_from_nn_lstm(cell: Any, lstm: nn.LSTM, genotype: Optional[Genotype] = None) -> None:
    """Copy a 1-layer ``nn.LSTM``'s weights into a cell running a vanilla-LSTM genotype (``genotype``; by
    default a FixedCell's own, else the named ``lstm``).

    Gate k of nn.LSTM (rows k*H:(k+1)*H, order i, f, g, o) goes to its (node, slot) row;
    W is transposed into the [in, out] bank layout; b_ih + b_hh become the single bias.
    """
    if cell.space != "lstm":
        raise ValueError(f"copy_from_nn_lstm needs an lstm-space cell, got {cell.space!r}")
    g = genotype or getattr(cell, "genotype", None) or Genotype.from_dict(LSTMSpace.named["lstm"])
    try:
        gates = nn_lstm_gates(g)
    except ValueError as e:
        raise ValueError(f"copy_from_nn_lstm needs a vanilla-LSTM genotype: {e}") from None
    if lstm.num_layers != 1 or lstm.bidirectional or getattr(lstm, "proj_size", 0):
        raise ValueError("copy_from_nn_lstm supports a 1-layer, unidirectional nn.LSTM without projection")
    if lstm.input_size != cell.input_size or lstm.hidden_size != cell.hidden_size:
        raise ValueError(f"size mismatch: nn.LSTM({lstm.input_size}, {lstm.hidden_size}) vs cell "
                         f"({cell.input_size}, {cell.hidden_size})")
    H = cell.hidden_size
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0  # [4H, E], [4H, H]
    b = torch.zeros(4 * H, dtype=w_ih.dtype, device=w_ih.device)
    if lstm.bias:
        b = lstm.bias_ih_l0 + lstm.bias_hh_l0
    with torch.no_grad():
        for k, name in enumerate(_NN_LSTM_ORDER):
            (r,) = cell.rows([gates[name]])
            rows = slice(k * H, (k + 1) * H)
            cell.bank_row("w_x", r).copy_(w_ih[rows].t())
            cell.bank_row("w_h", r).copy_(w_hh[rows].t())
            cell.bank_row("bias", r).copy_(b[rows])


register_space(LSTMSpace)
