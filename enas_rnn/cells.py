"""Recurrent cells that execute a genotype: the shared (supernet) form and the fixed form.

Both cells compile a genotype into the same ``_LSTMPlan``/``_ENASPlan`` and run the same
loop (``_run_lstm``/``_run_enas``); they differ only in which weight rows they own. So
search and final training run one piece of cell code (the DARTS lesson: ``DARTSCellSearch``
subclasses ``DARTSCell``), and ``FixedCell.from_shared`` reproduces ``SharedCell`` exactly.

Interface used by the language model (one core per layer)::

    cell.init_hidden(B) -> (h [B,H], c [B,H])          # enas: c is a zero dummy, passed through
    cell(x [T,B,E], hidden, genotype=None) -> (out [T,B,H] = h_t for every t, (h_T, c_T))

Weight banks (a row is one (node, operand slot) for lstm, one edge (l, j) for enas)::

    lstm  w_x  [E, S, H]   x_t    part of each xh operand's map   S = 2N shared, k live fixed
          w_h  [H, S, H]   h_t-1  part
          bias [S, H]
    enas  w_hw_x [E, 2, H], w_hw_h [H, 2, H]   highway node 1: [x; h] -> (gate c, candidate h~)
          w_edge [H, 2, P, H]                  node l reading node j: s_j -> (gate c, h~)
                                               P = N(N-1)/2 shared, N-1 fixed

Speed by design (ARCHITECTURE.md): the x_t part of every live xh map is one GEMM over
the whole sequence ([T*B, E] x [E, kH]); per step, ONE GEMM covers the h_{t-1} part of
all k live slots ([B, H] x [H, kH]); live slots are grouped by activation so each
activation is one kernel; a shared cell gathers its live rows once per forward, not per
step; only live nodes run; no host syncs in the loop. For enas, the children of one
parent share one GEMM ([B, H] x [H, 2kH]) and one ``lerp``. Backward, per step, does only
the GEMM for dL/dh_{t-1}; the recurrent weights' gradients are one GEMM over all steps
(``_StepGEMM``), as fused cuDNN/oneDNN RNN kernels do. Measured (scripts/bench_cell.py,
H=E=256, B=32, T=35, 1 CPU thread, CPU time): FixedCell(lstm) 1.2x nn.LSTM's time (which
runs oneDNN's fused LSTM kernel), SharedCell(lstm) 1.02x FixedCell(lstm).

Stability guard (``state_clip``, default 25): relu/mul chains make ENAS-style cells
explode (a chain n_{k+1} = n_k * n_k overflows float32 in 8 nodes). Every operand whose
activation is unbounded (identity, relu) is clamped to [-clip, clip] (relu fused as
``hardtanh(v, 0, clip)``, so it costs nothing); the clamps that interval analysis proves to
be no-ops are skipped at plan time. Hence every operand lies in [-clip, clip], every
node value in [-clip^2, clip^2] (625: safe even in float16) and nothing grows across
nodes or time. For the vanilla LSTM this is exactly one clamp per step, on c_{t-1};
|c| < 25 in normal ranges (and tanh(25) = 1 - 4e-22), so nn.LSTM is reproduced. For
enas, candidates with identity/relu are clamped and the incoming h is clamped once per
forward, so every state stays in [-clip, clip] (s_l is a convex combination).
``state_clip=None`` turns the guard off.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from enas_rnn.genotype import (
    ENASNode,
    Genotype,
    GenotypeError,
    LSTMNode,
    get_named,
    node_ref,
    parse_node_ref,
)
from enas_rnn.spaces import SearchSpace, make_space

__all__ = ["CellConfig", "SharedCell", "FixedCell", "copy_from_nn_lstm", "make_cell"]

Hidden = tuple[Tensor, Tensor]
Act = Optional[Callable[[Tensor], Tensor]]  # None: identity with no clamp (no kernel at all)

# Kernel order of activation groups in the per-step pre-activation tensor.
_GROUP_ORDER = ("tanh", "sigmoid", "relu", "identity")


@dataclass
class CellConfig:
    """Hydra structured config of a cell (plain types only).

    state_clip: guard bound (see module doc); None disables it.
    dropout_h:  variational dropout on h_{t-1} (one mask per sequence, training only;
                ENAS/AWD-LSTM use it on the recurrent input).
    init_range: weights ~ U(-r, r); None means 1/sqrt(hidden_size), like nn.LSTM.
    compile:    wrap the time loop of a FixedCell in ``torch.compile`` (off by default).
                Measured on CPU: ~30 s to compile, no speed-up (the loop is GEMM-bound);
                meant for CUDA, where per-kernel launch cost dominates (not measured here).
                A SharedCell ignores it (a recompile per sampled genotype costs more).
    """

    state_clip: Optional[float] = 25.0
    dropout_h: float = 0.0
    init_range: Optional[float] = None
    compile: bool = False


# ============================================================================ activations
def _act_fn(act: str, clip: float | None, clamp: bool) -> Act:
    """The kernel for an activation, with the guard's clamp fused where needed."""
    if act == "tanh":
        return torch.tanh
    if act == "sigmoid":
        return torch.sigmoid
    # The guard's clamp is hardtanh: its backward is one kernel (clamp's is three), and
    # hardtanh(v, 0, clip) is relu and clamp fused (gradient 0 at v = 0, like relu).
    if act == "relu":
        return functools.partial(F.hardtanh, min_val=0.0, max_val=clip) if clamp else torch.relu
    if act == "identity":
        return functools.partial(F.hardtanh, min_val=-clip, max_val=clip) if clamp else None
    raise GenotypeError(f"unknown activation {act!r}")


def _act_bound(act: str, src_bound: float) -> float:
    """Upper bound of |act(v)| given |v| <= src_bound (interval analysis for the guard)."""
    return 1.0 if act in ("tanh", "sigmoid") else src_bound


# ============================================================================ plans
@dataclass(frozen=True)
class _LSTMPlan:
    """Straight-line program of one lstm-space genotype.

    Registers: 0 = c_{t-1}; 1..k = activated xh operands (plan slot order); then derived
    operands act(source) and node values. ``program`` rows are (fn, dst, a, b); b < 0 means
    unary.
    """

    keys: tuple[tuple[int, int], ...]  # (node, slot) of each live xh operand, in GEMM column order
    groups: tuple[tuple[Act, int], ...]  # (activation kernel, number of slots) runs over the keys
    program: tuple[tuple[Callable[..., Tensor], int, int, int], ...]
    num_regs: int
    h_reg: int
    c_reg: int


@dataclass(frozen=True)
class _ENASGroup:
    """Children of one parent node: one GEMM, one sigmoid, one lerp per activation run."""

    parent: int  # register (= node number) of the parent
    keys: tuple[tuple[int, int], ...]  # (child, parent) edge of each child, in GEMM column order
    runs: tuple[tuple[Act, int], ...]  # (candidate activation, count) runs over the children
    children: tuple[int, ...]  # child registers, same order as keys


@dataclass(frozen=True)
class _ENASPlan:
    """Program of one enas-space genotype. Registers: 0 = h_{t-1}, i = node i."""

    act1: Act  # candidate activation of the highway node n1
    groups: tuple[_ENASGroup, ...]
    loose: tuple[int, ...]  # loose-end registers; h_t is their mean
    num_regs: int
    keys: tuple[tuple[int, int], ...]  # all edges, group after group (the gather order)
    sizes: tuple[int, ...]  # children per group


Plan = Union[_LSTMPlan, _ENASPlan]


def _compile_lstm(g: Genotype, clip: float | None) -> _LSTMPlan:
    """Plan of an lstm-space genotype: live xh slots grouped by activation, then the nodes."""
    live = g.live_nodes()
    # 1. Live xh operands, grouped by activation so each activation is one kernel per step.
    slots: list[tuple[str, int, int]] = []
    for i in live:
        node = g.nodes[i - 1]
        assert isinstance(node, LSTMNode)
        for s, o in enumerate(node.inputs):
            if o.source == "xh":
                slots.append((o.act, i, s))
    slots.sort(key=lambda t: (_GROUP_ORDER.index(t[0]), t[1], t[2]))
    keys = tuple((i, s) for _, i, s in slots)
    groups: list[tuple[Act, int]] = []
    for act in _GROUP_ORDER:
        n = sum(1 for a, _, _ in slots if a == act)
        if n:
            # xh pre-activations are unbounded, so identity/relu always get the clamp.
            groups.append((_act_fn(act, clip, clip is not None), n))
    slot_reg = {key: 1 + r for r, key in enumerate(keys)}

    # 2. Nodes in index order (topological), with interval bounds for the guard.
    regs = 1 + len(keys)
    bound: dict[str, float] = {"c": math.inf}  # c_{t-1} comes from outside: assume unbounded
    reg_of: dict[str, int] = {"c": 0}
    derived: dict[tuple[str, str], tuple[int, float]] = {}
    program: list[tuple[Callable[..., Tensor], int, int, int]] = []
    for i in live:
        node = g.nodes[i - 1]
        assert isinstance(node, LSTMNode)
        operand_regs, operand_bounds = [], []
        for s, o in enumerate(node.inputs):
            if o.source == "xh":
                operand_regs.append(slot_reg[(i, s)])
                operand_bounds.append(1.0 if o.act in ("tanh", "sigmoid") else (clip or math.inf))
                continue
            key = (o.source, o.act)
            if key not in derived:  # act(source) computed once per step even if read twice
                src_b = bound[o.source]
                clamp = clip is not None and o.act in ("identity", "relu") and src_b > clip
                fn = _act_fn(o.act, clip, clamp)
                b = clip if clamp else _act_bound(o.act, src_b)
                if fn is None:
                    derived[key] = (reg_of[o.source], b)
                else:
                    program.append((fn, regs, reg_of[o.source], -1))
                    derived[key] = (regs, b)
                    regs += 1
            r, b = derived[key]
            operand_regs.append(r)
            operand_bounds.append(b)
        ba, bb = operand_bounds
        if node.op == "add":
            program.append((torch.add, regs, operand_regs[0], operand_regs[1]))
            bound[node_ref(i)] = ba + bb
        else:
            program.append((torch.mul, regs, operand_regs[0], operand_regs[1]))
            bound[node_ref(i)] = ba * bb
        reg_of[node_ref(i)] = regs
        regs += 1
    return _LSTMPlan(
        keys=keys,
        groups=tuple(groups),
        program=tuple(program),
        num_regs=regs,
        h_reg=reg_of[g.outputs["h"]],
        c_reg=reg_of[g.outputs["c"]],
    )


def _compile_enas(g: Genotype, clip: float | None) -> _ENASPlan:
    """Plan of an enas-space genotype: node 1, then one group per parent, in index order."""
    guard = clip is not None

    def cand_fn(act: str) -> Act:
        # h~ comes out of a GEMM, unbounded: identity/relu get the clamp.
        return _act_fn(act, clip, guard and act in ("identity", "relu"))

    children: dict[int, list[int]] = {}
    for i in range(2, g.num_nodes + 1):
        node = g.nodes[i - 1]
        assert isinstance(node, ENASNode)
        parent = parse_node_ref(node.input)
        assert parent is not None
        children.setdefault(parent, []).append(i)
    groups = []
    for parent in sorted(children):  # a parent's value exists before its group runs
        kids = sorted(children[parent], key=lambda i: (_GROUP_ORDER.index(g.nodes[i - 1].act), i))
        runs: list[tuple[Act, int]] = []
        for act in _GROUP_ORDER:
            n = sum(1 for i in kids if g.nodes[i - 1].act == act)
            if n:
                runs.append((cand_fn(act), n))
        groups.append(
            _ENASGroup(
                parent=parent,
                keys=tuple((i, parent) for i in kids),
                runs=tuple(runs),
                children=tuple(kids),
            )
        )
    return _ENASPlan(
        act1=cand_fn(g.nodes[0].act),
        groups=tuple(groups),
        loose=g.loose_ends(),
        num_regs=g.num_nodes + 1,
        keys=tuple(k for grp in groups for k in grp.keys),
        sizes=tuple(len(grp.keys) for grp in groups),
    )


def _compile(g: Genotype, clip: float | None) -> Plan:
    return _compile_lstm(g, clip) if g.space == "lstm" else _compile_enas(g, clip)


# ============================================================================ the loops
class _StepGEMM(torch.autograd.Function):
    """Hoisted GEMM of a recurrence whose backward also yields the recurrent weight's gradient.

    The loop computes ``pre_t = base_t + in_t @ w_rec.detach()`` and appends ``in_t`` to
    ``tape``. Per step, backward then does ONE GEMM (grad of in_t) instead of two plus an
    accumulation; the weight gradient is one big GEMM over all steps here, the way fused
    cuDNN/oneDNN RNN kernels do it::

        forward:   base = bias + x @ w_in           [T*B, E] x [E, N] -> [T*B, N]  (zeros if no x)
        backward:  G = dL/dbase = dL/dpre_t, stacked over t                 [T*B, N]
                   dw_rec = cat(tape)^T @ G          [K, T*B] x [T*B, N] -> [K, N]
                   dx = G @ w_in^T,  dw_in = x^T @ G,  dbias = sum_rows(G)

    Autograd runs this backward after every step's (all of them consume ``base``), when the
    tape is complete. Not twice differentiable.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor | None,
        w_in: Tensor | None,
        bias: Tensor | None,
        w_rec: Tensor,
        tape: list[Tensor],
        rows: int,
    ) -> Tensor:
        ctx.tape = tape
        ctx.save_for_backward(x, w_in)
        ctx.has_bias = bias is not None
        # Input dtypes: under autocast the step GEMMs run in half precision while the
        # weights stay float32, so backward computes in grad's dtype and casts back.
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (x, w_in, bias, w_rec))
        if x is None:
            # A stride-0 zero base: the per-step addmm still routes dL/dpre_t here (stacked
            # by unbind's backward) without writing T*B*N zeros every forward.
            return w_rec.new_zeros(1, 1).expand(rows, w_rec.shape[1])
        return torch.mm(x, w_in) if bias is None else torch.addmm(bias, x, w_in)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, w_in = ctx.saved_tensors
        need_x, need_w_in, need_b, need_w_rec = ctx.needs_input_grad[:4]
        dt_x, dt_w_in, dt_b, dt_w_rec = ctx.dtypes
        dx = grad.mm(w_in.to(grad.dtype).t()).to(dt_x) if need_x else None
        dw_in = x.to(grad.dtype).t().mm(grad).to(dt_w_in) if need_w_in else None
        db = grad.sum(0).to(dt_b) if (need_b and ctx.has_bias) else None
        dw_rec = None
        if need_w_rec and ctx.tape:
            # [T*B, K]^T x [T*B, N] -> [K, N]: the recurrent weight's gradient over all steps.
            hs = torch.cat([t.to(grad.dtype) for t in ctx.tape], 0)
            dw_rec = hs.t().mm(grad).to(dt_w_rec)
        ctx.tape = None  # free the inputs now that the gradient is taken
        return dx, dw_in, db, dw_rec, None, None


def _hoist(
    x: Tensor | None, w_in: Tensor | None, bias: Tensor | None, w_rec: Tensor, T: int, B: int
) -> tuple[tuple[Tensor, ...], Tensor, list[Tensor] | None]:
    """Per-step bases [B, N], the recurrent weight to use in the loop, and the tape to fill.

    With autograd on, the loop uses ``w_rec.detach()`` and the weight gradient comes from
    ``_StepGEMM``; without it (eval, no_grad) the plain ops run and nothing is taped.
    """
    N = w_rec.shape[1]
    # Under torch.compile the plain ops are traced instead (a tape of tensors filled after
    # the Function ran is a side effect the compiler cannot follow).
    if torch.is_grad_enabled() and w_rec.requires_grad and not torch.compiler.is_compiling():
        tape: list[Tensor] = []
        base = _StepGEMM.apply(x, w_in, bias, w_rec, tape, T * B)
        # [T*B, N] -> [T, B, N] -> T x [B, N]; unbind's backward is one stack (indexing base[t]
        # per step would allocate a full [T, B, N] gradient per step).
        return base.view(T, B, N).unbind(0), w_rec.detach(), tape
    if x is None:
        base = w_rec.new_zeros(T * B, N)
    else:
        base = torch.mm(x, w_in) if bias is None else torch.addmm(bias, x, w_in)
    return base.view(T, B, N).unbind(0), w_rec, None


def _run_lstm(
    plan: _LSTMPlan, w_x: Tensor, w_h: Tensor, bias: Tensor, x: Tensor, hidden: Hidden, mask: Tensor | None
) -> tuple[Tensor, Hidden]:
    """Run an lstm-space plan over a sequence. w_x [E, kH], w_h [H, kH], bias [kH].

    One step (k live xh operands, grouped by activation, e.g. vanilla LSTM: g | i f o)::

        xp_t [B, kH] --+
                       +-- addmm --> pre [B, kH] --split by group--> tanh [B, H] | sigmoid [B, 3H]
        h_{t-1} @ W_h -+                                               split(H) -> k x [B, H] operands
        registers: c_{t-1}, operands, act(node) values, node values -> program -> (h_t, c_t)
    """
    T, B, E = x.shape
    h, c = hidden
    H = h.shape[-1]
    if plan.keys:
        # Hoisted x_t part of every live xh map, bias folded in: [T*B, E] x [E, kH] -> T x [B, kH].
        xp, w_rec, tape = _hoist(x.reshape(T * B, E), w_x, bias, w_h, T, B)
    else:  # a cell that never reads xh: no GEMM at all
        xp, w_rec, tape = (None,) * T, w_h, None
    widths = [n * H for _, n in plan.groups]
    regs: list[Any] = [None] * plan.num_regs
    program, groups = plan.program, plan.groups
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


def _run_enas(
    plan: _ENASPlan,
    w_hw_x: Tensor,
    w_hw_h: Tensor,
    w_groups: Sequence[Tensor],
    x: Tensor,
    hidden: Hidden,
    mask: Tensor | None,
    clip: float | None,
) -> tuple[Tensor, Hidden]:
    """Run an enas-space plan. w_hw_x [E, 2H], w_hw_h [H, 2H], w_groups[g] [H, 2*k_g*H].

    Node update (Pham et al. 2018, Sec. 2.1; enas_lm): [c; h~] = W s_j,
    s_l = s_j + sigmoid(c) * (f(h~) - s_j) = lerp(s_j, f(h~), sigmoid(c)).
    """
    T, B, E = x.shape
    h, c_dummy = hidden
    H = h.shape[-1]
    if clip is not None:
        h = F.hardtanh(h, -clip, clip)  # once per forward: keeps every state within [-clip, clip]
    # Hoisted x_t part of the highway node: [T*B, E] x [E, 2H] -> T x [B, 2H] (no bias, as enas_lm).
    xp, w_rec, tape = _hoist(x.reshape(T * B, E), w_hw_x, None, w_hw_h, T, B)
    # Node groups have no x part; their base is zeros that carry the deferred weight gradient.
    bases = [_hoist(None, None, None, w, T, B) for w in w_groups]
    regs: list[Any] = [None] * plan.num_regs
    act1, groups, loose = plan.act1, plan.groups, plan.loose
    inv_loose = 1.0 / len(loose)
    outs = []
    for t, xp_t in enumerate(xp):
        h_in = h if mask is None else h * mask
        if tape is not None:
            tape.append(h_in.detach())  # detached: no ctx->tape->graph->ctx cycle (leak)
        # Highway node 1 over [x_t; h_{t-1}]: [B, 2H] -> [B, 2, H] -> gate, candidate [B, H].
        g_pre, c_pre = torch.addmm(xp_t, h_in, w_rec).view(B, 2, H).unbind(1)
        # (.to: under autocast the GEMM output is half precision and lerp wants one dtype.)
        regs[1] = torch.lerp(h.to(c_pre.dtype), c_pre if act1 is None else act1(c_pre), torch.sigmoid(g_pre))
        for grp, (base, w, g_tape) in zip(groups, bases):
            s_p = regs[grp.parent]
            if g_tape is not None:
                g_tape.append(s_p.detach())
            k = len(grp.children)
            out = torch.addmm(base[t], s_p, w)  # all k children of this parent in one GEMM: [B, 2kH]
            if k == 1:
                g_pre, c_pre = out.view(B, 2, H).unbind(1)
                fn = grp.runs[0][0]
                regs[grp.children[0]] = torch.lerp(
                    s_p.to(c_pre.dtype), c_pre if fn is None else fn(c_pre), torch.sigmoid(g_pre)
                )
                continue
            g_pre, c_pre = out.view(B, 2, k, H).unbind(1)  # [B, 2kH] -> [B, 2, k, H] -> 2 x [B, k, H]
            gate = torch.sigmoid(g_pre)
            s_b = s_p.to(c_pre.dtype).unsqueeze(1)  # [B, H] -> [B, 1, H], broadcast over the k children
            if len(grp.runs) == 1:
                fn = grp.runs[0][0]
                parts = torch.lerp(s_b, c_pre if fn is None else fn(c_pre), gate).unbind(1)
            else:
                sizes = [n for _, n in grp.runs]
                parts = []
                for (fn, _), c_run, g_run in zip(grp.runs, c_pre.split(sizes, 1), gate.split(sizes, 1)):
                    parts.extend(torch.lerp(s_b, c_run if fn is None else fn(c_run), g_run).unbind(1))
            for r, v in zip(grp.children, parts):
                regs[r] = v
        # h_t = mean of the loose ends (Pham et al. 2018, Sec. 2.1).
        if len(loose) == 1:
            h = regs[loose[0]]
        else:
            h = torch.stack([regs[r] for r in loose]).sum(0).mul_(inv_loose)
        outs.append(h)
    out = torch.stack(outs) if outs else x.new_empty(0, B, H)
    return out, (h, c_dummy)


# ============================================================================ modules
def _rows_arg(rows: Sequence[int], device: torch.device) -> tuple[int, int] | Tensor:
    """A contiguous run of rows as (start, length) for ``narrow`` (a view); else an index tensor."""
    if rows and list(rows) == list(range(rows[0], rows[0] + len(rows))):
        return (rows[0], len(rows))
    return torch.tensor(list(rows), dtype=torch.long, device=device)


def _take(bank: Tensor, dim: int, rows: tuple[int, int] | Tensor) -> Tensor:
    """Rows of a bank along ``dim``: the bank itself, a narrow view, or an index_select copy.

    Called once per forward and parameter: every gather's backward writes a bank-sized
    gradient, so gathering per group (or per step) would multiply that cost.
    """
    if isinstance(rows, tuple):
        if rows == (0, bank.shape[dim]):
            return bank  # a FixedCell owns exactly its rows: no op, no extra backward
        return bank.narrow(dim, rows[0], rows[1])
    return bank.index_select(dim, rows)


class _GenotypeCell(nn.Module):
    """Common machinery: weight banks, plan cache, gather, dropout mask, hidden init."""

    def __init__(
        self,
        space: str,
        input_size: int,
        hidden_size: int,
        num_rows: int,
        state_clip: float | None = 25.0,
        dropout_h: float = 0.0,
        init_range: float | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if space not in ("lstm", "enas"):
            raise ValueError(f"unknown space {space!r}; valid spaces: enas, lstm")
        if state_clip is not None and not state_clip > 0:
            raise ValueError(f"state_clip must be positive or None, got {state_clip}")
        if not 0.0 <= dropout_h < 1.0:
            raise ValueError(f"dropout_h must be in [0, 1), got {dropout_h}")
        self.space = space
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.state_clip = None if state_clip is None else float(state_clip)
        self.dropout_h = float(dropout_h)
        self.init_range = init_range
        self.compile = bool(compile)
        E, H = self.input_size, self.hidden_size
        if space == "lstm":
            self.w_x = nn.Parameter(torch.empty(E, num_rows, H))
            self.w_h = nn.Parameter(torch.empty(H, num_rows, H))
            self.bias = nn.Parameter(torch.empty(num_rows, H))
        else:
            self.w_hw_x = nn.Parameter(torch.empty(E, 2, H))
            self.w_hw_h = nn.Parameter(torch.empty(H, 2, H))
            self.w_edge = nn.Parameter(torch.empty(H, 2, num_rows, H))
        self.reset_parameters()
        self._plans: dict[tuple[Genotype, float | None], Plan] = {}
        self._index: dict[tuple[int, torch.device], Any] = {}

    def reset_parameters(self) -> None:
        """U(-r, r) with r = init_range or 1/sqrt(H) (nn.LSTM's default)."""
        r = self.init_range if self.init_range is not None else 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -r, r)

    # ---------------------------------------------------------------- interface
    def init_hidden(self, batch_size: int) -> Hidden:
        """Zero (h, c), each [B, H], on the weights' device and dtype (enas: c is a dummy)."""
        w = next(self.parameters())
        return w.new_zeros(batch_size, self.hidden_size), w.new_zeros(batch_size, self.hidden_size)

    def rows(self, keys: Sequence[tuple[int, int]]) -> list[int]:
        """Bank rows of weight keys: (node, slot) for lstm, (node l, parent j) for enas."""
        raise NotImplementedError

    def plan(self, genotype: Genotype) -> Plan:
        """Compiled (cached) plan of ``genotype`` under this cell's guard."""
        key = (genotype, self.state_clip)
        p = self._plans.get(key)
        if p is None:
            if len(self._plans) >= 1024:  # bound the cache during long searches
                self._plans.clear()
                self._index.clear()
            p = self._plans[key] = _compile(genotype, self.state_clip)
        return p

    def _rows_cached(self, plan: Plan, keys: Sequence[tuple[int, int]], device: torch.device) -> Any:
        # ``keys`` tuples live as long as their cached plan (both caches are cleared together).
        cache_key = (id(keys), device)
        got = self._index.get(cache_key)
        if got is None:
            got = self._index[cache_key] = _rows_arg(self.rows(keys), device)
        return got

    def _mask(self, h: Tensor) -> Tensor | None:
        """Variational dropout mask on h_{t-1}: one per sequence, training only (Gal & Ghahramani 2016)."""
        if not (self.training and self.dropout_h > 0):
            return None
        keep = 1.0 - self.dropout_h
        return h.new_empty(h.shape).bernoulli_(keep).div_(keep)

    def _execute(self, plan: Plan, x: Tensor, hidden: Hidden | None) -> tuple[Tensor, Hidden]:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"expected x of shape [T, B, {self.input_size}], got {tuple(x.shape)}")
        if hidden is None:
            hidden = self.init_hidden(x.shape[1])
        h, c = hidden[0], hidden[-1]
        mask = self._mask(h)
        E, H, dev = self.input_size, self.hidden_size, x.device
        if isinstance(plan, _LSTMPlan):
            k = len(plan.keys)
            rows = self._rows_cached(plan, plan.keys, dev)
            # Gather the live slots once per forward: [E, S, H] -> [E, k, H] -> [E, kH].
            w_x = _take(self.w_x, 1, rows).reshape(E, k * H)
            w_h = _take(self.w_h, 1, rows).reshape(H, k * H)
            bias = _take(self.bias, 0, rows).reshape(k * H)
            return self._loop(_run_lstm, plan, w_x, w_h, bias, x, (h, c), mask)
        # One gather for all used edges, then split per group:
        # [H, 2, P, H] -> [H, 2, n_used, H] -> per group [H, 2, k, H] -> [H, 2kH]
        # (columns: gates of the k children | their candidates).
        w_used = _take(self.w_edge, 2, self._rows_cached(plan, plan.keys, dev))
        w_groups = [w.reshape(H, 2 * k * H) for w, k in zip(w_used.split(plan.sizes, 2), plan.sizes)]
        return self._loop(
            _run_enas,
            plan,
            self.w_hw_x.reshape(E, 2 * H),
            self.w_hw_h.reshape(H, 2 * H),
            w_groups,
            x,
            (h, c),
            mask,
            self.state_clip,
        )

    def _loop(self, fn: Callable[..., tuple[Tensor, Hidden]], *args: Any) -> tuple[Tensor, Hidden]:
        return fn(*args)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (
            f"space={self.space}, input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"state_clip={self.state_clip}, dropout_h={self.dropout_h}"
        )


def _space_of(space: SearchSpace | str, num_nodes: int | None) -> SearchSpace:
    if isinstance(space, SearchSpace):
        return space
    return make_space(space, 8 if num_nodes is None else num_nodes)


class SharedCell(_GenotypeCell):
    """Every parameter of a space (the ENAS supernet); runs any genotype passed to forward.

    lstm: one (W_x, W_h, b) per (node, operand slot) - used when that operand reads xh.
    enas: highway W over [x; h] for node 1, and W_{l,j} (H -> 2H) for every pair j < l.
    """

    def __init__(
        self,
        space: SearchSpace | str,
        input_size: int,
        hidden_size: int,
        *,
        num_nodes: int | None = None,
        state_clip: float | None = 25.0,
        dropout_h: float = 0.0,
        init_range: float | None = None,
        compile: bool = False,
    ) -> None:
        sp = _space_of(space, num_nodes)
        n = sp.num_nodes
        rows = 2 * n if sp.name == "lstm" else n * (n - 1) // 2
        super().__init__(sp.name, input_size, hidden_size, rows, state_clip, dropout_h, init_range, compile)
        self.num_nodes = n
        # compile is accepted for a uniform config but not used: a shared cell sees a new
        # genotype every step, and a recompile per genotype costs far more than it saves.

    def rows(self, keys: Sequence[tuple[int, int]]) -> list[int]:
        if self.space == "lstm":
            return [(i - 1) * 2 + s for i, s in keys]
        # Edge (l, j), 1 <= j < l <= N, numbered row-major over l: (l-1)(l-2)/2 + (j-1).
        return [(l - 1) * (l - 2) // 2 + (j - 1) for l, j in keys]

    def forward(self, x: Tensor, hidden: Hidden | None = None, genotype: Genotype | None = None) -> tuple[Tensor, Hidden]:
        """x [T, B, E] -> (h_t for every t [T, B, H], final (h, c)), running ``genotype``."""
        if genotype is None:
            raise ValueError("SharedCell.forward needs the genotype to run (genotype=...)")
        if genotype.space != self.space:
            raise GenotypeError(f"a {genotype.space!r} genotype cannot run on a {self.space!r} SharedCell")
        if genotype.num_nodes > self.num_nodes:
            raise GenotypeError(
                f"genotype has {genotype.num_nodes} nodes; this SharedCell holds weights for {self.num_nodes}"
            )
        return self._execute(self.plan(genotype), x, hidden)


class FixedCell(_GenotypeCell):
    """One genotype, holding ONLY the weights it uses (live xh slots / used edges)."""

    def __init__(
        self,
        genotype: Genotype,
        input_size: int,
        hidden_size: int,
        *,
        state_clip: float | None = 25.0,
        dropout_h: float = 0.0,
        init_range: float | None = None,
        compile: bool = False,
    ) -> None:
        plan = _compile(genotype, None if state_clip is None else float(state_clip))
        keys = plan.keys
        super().__init__(genotype.space, input_size, hidden_size, len(keys), state_clip, dropout_h, init_range, compile)
        self.genotype = genotype
        # Bank rows are laid out in the plan's own order, so the gather is a free view.
        self._row_of = {key: r for r, key in enumerate(keys)}
        self._plan = plan
        self._compiled: Callable[..., tuple[Tensor, Hidden]] | None = None

    @classmethod
    def from_shared(cls, shared: SharedCell, genotype: Genotype, **overrides: Any) -> FixedCell:
        """A FixedCell of ``genotype`` with ``shared``'s weights for it (identical outputs)."""
        if genotype.space != shared.space:
            raise GenotypeError(f"a {genotype.space!r} genotype cannot come from a {shared.space!r} SharedCell")
        kwargs = dict(
            state_clip=shared.state_clip,
            dropout_h=shared.dropout_h,
            init_range=shared.init_range,
            compile=shared.compile,
        )
        kwargs.update(overrides)
        w = next(shared.parameters())
        fixed = cls(genotype, shared.input_size, shared.hidden_size, **kwargs).to(device=w.device, dtype=w.dtype)
        fixed.load_from_shared(shared)
        return fixed

    def load_from_shared(self, shared: SharedCell) -> None:
        """Copy this genotype's rows out of ``shared``'s banks."""
        keys = list(self._row_of)
        src = torch.tensor(shared.rows(keys), dtype=torch.long, device=next(shared.parameters()).device)
        with torch.no_grad():
            if self.space == "lstm":
                self.w_x.copy_(shared.w_x.index_select(1, src))
                self.w_h.copy_(shared.w_h.index_select(1, src))
                self.bias.copy_(shared.bias.index_select(0, src))
            else:
                self.w_hw_x.copy_(shared.w_hw_x)
                self.w_hw_h.copy_(shared.w_hw_h)
                self.w_edge.copy_(shared.w_edge.index_select(2, src))

    def rows(self, keys: Sequence[tuple[int, int]]) -> list[int]:
        try:
            return [self._row_of[k] for k in keys]
        except KeyError as e:
            raise GenotypeError(f"weight key {e.args[0]} is not live in this FixedCell's genotype") from None

    def plan(self, genotype: Genotype | None = None) -> Plan:
        return self._plan

    def forward(self, x: Tensor, hidden: Hidden | None = None, genotype: Genotype | None = None) -> tuple[Tensor, Hidden]:
        """x [T, B, E] -> (h_t for every t [T, B, H], final (h, c)). ``genotype`` must be None or its own."""
        if genotype is not None and genotype != self.genotype:
            raise GenotypeError("FixedCell runs only its own genotype; build another FixedCell for a different one")
        return self._execute(self._plan, x, hidden)

    def _loop(self, fn: Callable[..., tuple[Tensor, Hidden]], *args: Any) -> tuple[Tensor, Hidden]:
        if not self.compile:
            return fn(*args)
        if self._compiled is None:
            self._compiled = torch.compile(fn, dynamic=False)
        return self._compiled(*args)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", genotype={self.genotype.hash()}"


def make_cell(
    space: SearchSpace | str,
    input_size: int,
    hidden_size: int,
    genotype: Genotype | None = None,
    config: CellConfig | None = None,
) -> _GenotypeCell:
    """SharedCell for ``space`` when ``genotype`` is None, else FixedCell(genotype); settings from ``config``."""
    if config is None:
        cfg: dict[str, Any] = {}
    elif is_dataclass(config):
        cfg = asdict(config)
    else:  # a Hydra DictConfig with CellConfig's fields
        cfg = dict(config.items())  # type: ignore[attr-defined]
    if genotype is None:
        return SharedCell(space, input_size, hidden_size, **cfg)
    return FixedCell(genotype, input_size, hidden_size, **cfg)


# Gate order of torch.nn.LSTM's weight_ih/weight_hh rows, and where each gate lives in the
# ``lstm`` genotype: (node, operand slot).
_NN_LSTM_GATES = {"i": (0, (1, 0)), "f": (1, (2, 1)), "g": (2, (1, 1)), "o": (3, (4, 1))}


def copy_from_nn_lstm(cell: _GenotypeCell, lstm: nn.LSTM) -> None:
    """Copy a 1-layer ``nn.LSTM``'s weights into a cell running the named ``lstm`` genotype.

    Gate k of nn.LSTM (rows k*H:(k+1)*H, order i, f, g, o) goes to its (node, slot) row;
    W is transposed into the [in, out] bank layout; b_ih + b_hh become the single bias.
    """
    if cell.space != "lstm":
        raise ValueError(f"copy_from_nn_lstm needs an lstm-space cell, got {cell.space!r}")
    if isinstance(cell, FixedCell) and cell.genotype != get_named("lstm"):
        raise ValueError("copy_from_nn_lstm needs a FixedCell of the named 'lstm' genotype")
    if lstm.num_layers != 1 or lstm.bidirectional or getattr(lstm, "proj_size", 0):
        raise ValueError("copy_from_nn_lstm supports a 1-layer, unidirectional nn.LSTM without projection")
    if lstm.input_size != cell.input_size or lstm.hidden_size != cell.hidden_size:
        raise ValueError(
            f"size mismatch: nn.LSTM({lstm.input_size}, {lstm.hidden_size}) vs cell "
            f"({cell.input_size}, {cell.hidden_size})"
        )
    H = cell.hidden_size
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0  # [4H, E], [4H, H]
    b = torch.zeros(4 * H, dtype=w_ih.dtype, device=w_ih.device)
    if lstm.bias:
        b = lstm.bias_ih_l0 + lstm.bias_hh_l0
    with torch.no_grad():
        for k, key in _NN_LSTM_GATES.values():
            (r,) = cell.rows([key])
            rows = slice(k * H, (k + 1) * H)
            cell.w_x[:, r, :] = w_ih[rows].t()
            cell.w_h[:, r, :] = w_hh[rows].t()
            cell.bias[r] = b[rows]
