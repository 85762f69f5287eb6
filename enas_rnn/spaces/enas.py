"""The ``enas`` space (Pham et al. 2018, Sec. 2.1; google-research ``enas_lm``): everything an
enas-space cell means.

Node 1 is a highway node over [x_t; h_{t-1}]; node l > 1 reads one earlier node j and applies an
activation f inside its highway update::

    [c; h~] = W_{l,j} s_j,    s_l = s_j + sigmoid(c) * (f(h~) - s_j) = lerp(s_j, f(h~), sigmoid(c))

h_t is the mean of the loose ends (nodes no other node reads). There is no cell state: ``c`` is a
zero dummy carried through so every core keeps nn.LSTM's (h, c) convention. Decisions::

    node 1: act;   node l > 1: source [n1..n_{l-1}], act

Weight banks: the highway node's ``w_hw_x [E, 2, H]``, ``w_hw_h [H, 2, H]``, and ``w_edge
[H, 2, P, H]`` with one row per edge (l, j): P = N(N-1)/2 in the supernet (held as P row
parameters, see ``enas_rnn.cells.SharedCell``), N-1 in a fixed cell.

Speed: the time loop is one autograd node with a hand-written backward (:class:`_ENASLoop`): per
step and parent one GEMM for all its children, a few in-place kernels into preallocated (pooled)
buffers, and in backward one product, one sum and one GEMM per parent; weight gradients are one
GEMM per parent over the whole window. It computes what the plain autograd loop computed, up to
float rounding (tests/test_speed.py checks it against that loop, copied from before the change).
For float32 on the CPU the same loop runs in C++ (``enas_rnn.native``: one GEMM and one fused
elementwise pass per step and parent, no Python per step) when it could be built; this PyTorch
loop is the reference and the path for every other dtype and device.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor
from torch.nn import functional as F

import enas_rnn.native as native
from enas_rnn.genotype import (
    CellAnalysis,
    Genotype,
    GenotypeError,
    node_ref,
    parse_node_ref,
    register_space,
)
from enas_rnn.kernels import ACTIVATIONS, BOUNDED, GROUP_ORDER, POOL, Op, act_op, take
from enas_rnn.spaces.base import (
    Decision,
    ExportParts,
    GraphBox,
    GraphEdge,
    Hidden,
    SearchSpace,
    options,
)

__all__ = ["ENASNode", "ENASPlan", "ENASGroup", "ENASSpace"]


@dataclass(frozen=True)
class ENASNode:
    """A node: reads one source and applies ``act`` inside its highway update."""

    input: str
    act: str

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.input,)

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "act": self.act}


def _err(where: str, msg: str) -> GenotypeError:
    return GenotypeError(f"{where}: {msg}")


# ============================================================================ the plan
@dataclass(frozen=True, eq=False)
class ENASGroup:
    """Children of one parent node: one GEMM, one sigmoid, one activation per run, one lerp."""

    parent: int  # the parent's node number
    keys: tuple[tuple[int, int], ...]  # (child, parent) edge of each child, in GEMM column order
    runs: tuple[tuple[Optional[Op], int], ...]  # (candidate activation, count) runs over the children
    children: tuple[int, ...]  # child node numbers, same order as keys
    parent_slot: int  # the parent's slot in the loop's state tensor (see ENASPlan)
    first: int  # slot of the first child; the children hold slots first .. first + k - 1


@dataclass(frozen=True, eq=False)
class ENASPlan:
    """Program of one genotype, executed by :func:`run_enas` and printed by export.

    The loop keeps one step's node states in a tensor [N, B, H] whose slots are: 0 = n1, then the
    children of each group in ``keys`` order, so a group writes its k children as ONE block."""

    act1: Optional[Op]  # candidate activation of the highway node n1
    groups: tuple[ENASGroup, ...]
    loose: tuple[int, ...]  # loose-end node numbers; h_t is their mean
    keys: tuple[tuple[int, int], ...]  # all edges, group after group (the gather order)
    sizes: tuple[int, ...]  # children per group
    loose_slots: tuple[int, ...]  # the loose ends' slots, in node order (the mean sums as before)
    clip: Optional[float] = None  # the guard's bound (the clamping ops' limit)
    _device_cache: dict = field(default_factory=dict, repr=False)  # loose_slots as an index tensor per device

    def loose_index(self, device: torch.device) -> Tensor:
        """``loose_slots`` as a long tensor on ``device``, made once (no host-to-device copy per call)."""
        idx = self._device_cache.get(device)
        if idx is None:
            idx = self._device_cache[device] = torch.tensor(self.loose_slots, device=device)
        return idx

    def native_meta(self) -> tuple[list[int], int, list[int], float]:
        """The plan as ``enas_rnn.native``'s loop reads it: (groups, act1 code, loose slots, clip);
        groups = [G, then per group: parent slot, first slot, k, one activation code per child]."""
        meta = self._device_cache.get("native")
        if meta is None:
            groups = [len(self.groups)]
            for grp in self.groups:
                groups += [grp.parent_slot, grp.first, len(grp.children)]
                for op, n in grp.runs:
                    groups += [native.ACT_CODES[None if op is None else op.name]] * n
            act1 = native.ACT_CODES[None if self.act1 is None else self.act1.name]
            meta = self._device_cache["native"] = (groups, act1, list(self.loose_slots),
                                                   float(self.clip) if self.clip is not None else 0.0)
        return meta


def compile_enas(g: Genotype, clip: Optional[float]) -> ENASPlan:
    """Plan of a genotype: node 1, then one group per parent, in index order."""
    guard = clip is not None

    def cand(act: str) -> Optional[Op]:
        # h~ comes out of a GEMM, unbounded: identity/relu get the clamp.
        return act_op(act, clip, guard and act in ("identity", "relu"))

    children: dict[int, list[int]] = {}
    for i in range(2, g.num_nodes + 1):
        parent = parse_node_ref(g.nodes[i - 1].input)
        assert parent is not None
        children.setdefault(parent, []).append(i)
    groups = []
    slot = {1: 0}
    first = 1
    for parent in sorted(children):  # a parent's value exists before its group runs
        kids = sorted(children[parent], key=lambda i: (GROUP_ORDER.index(g.nodes[i - 1].act), i))
        runs: list[tuple[Optional[Op], int]] = []
        for act in GROUP_ORDER:
            n = sum(1 for i in kids if g.nodes[i - 1].act == act)
            if n:
                runs.append((cand(act), n))
        groups.append(ENASGroup(
            parent=parent, keys=tuple((i, parent) for i in kids), runs=tuple(runs), children=tuple(kids),
            parent_slot=slot[parent], first=first,
        ))
        for i in kids:
            slot[i] = first
            first += 1
    loose = ENASSpace.loose_ends(g)
    return ENASPlan(
        act1=cand(g.nodes[0].act),
        groups=tuple(groups),
        loose=loose,
        keys=tuple(k for grp in groups for k in grp.keys),
        sizes=tuple(len(grp.keys) for grp in groups),
        loose_slots=tuple(slot[i] for i in loose),
        clip=clip,
    )


def _act_grad(op: Optional[Op], g: Tensor, y: Tensor, out: Tensor) -> None:
    """dL/dv into ``out`` given g = dL/dy and y = op(v) (identity: a copy)."""
    if op is None:
        out.copy_(g)
    else:
        op.grad(g, y, out)  # type: ignore[misc]


def _runs(v: Tensor, runs: Sequence[tuple[Optional[Op], int]], dim: int) -> list[Tensor]:
    """``v`` cut along the children (dimension ``dim``) into the group's activation runs."""
    if len(runs) == 1:
        return [v]
    out, pos = [], 0
    for _, n in runs:
        out.append(v.narrow(dim, pos, n))
        pos += n
    return out


def _loop_forward(plan: ENASPlan, xp: Tensor, h: Tensor, mask: Optional[Tensor], w1: Tensor,
                  ws: Sequence[Tensor], keep: bool) -> tuple[Tensor, Tensor, Optional[Tensor], list[Tensor]]:
    """The time loop, writing into preallocated buffers (no autograd inside).

    Per step and group: one GEMM into the group's scratch [B, 2kH] = [B, 2, k, H] (gate | candidate
    of its k children; reused every step, so it stays in cache), an in-place sigmoid on the gates,
    an in-place activation per run, one lerp that writes the k children into their slots of the
    state tensor S_t [N, B, H]. With ``keep`` (for backward) S [T, N, B, H] is kept for every step,
    and so are the coefficients Q [T, B, 3, k, H] the backward needs, computed here while g, f and
    s_p are still in cache (see :class:`_ENASLoop`); nothing else is kept. Every per-step view is
    cut before the loop (``unbind``), so a step runs kernels, not view bookkeeping.
    """
    T, B = xp.shape[0], xp.shape[1]
    H = h.shape[-1]
    N = 1 + len(plan.keys)
    steps = T if keep else 1
    dt, dev = xp.dtype, xp.device
    S = POOL.empty((steps, N, B, H), dt, dev)  # node-major: a parent's state is a contiguous [B, H]
    out = xp.new_empty(T, B, H)
    one = xp.new_ones(())

    def per_step(v: Tensor) -> list[Tensor]:  # [steps, ...] -> T views (the same one without keep)
        views = list(v.unbind(0))
        return views if keep else views * T

    G1 = xp.new_empty(B, 2 * H)  # n1's scratch: gate | candidate
    Q1 = POOL.empty((T, B, 3 * H), dt, dev) if keep else None
    node1 = (G1, G1[:, :H], G1[:, H:], per_step(S[:, 0]))
    q1 = [Q1[:, :, j * H:(j + 1) * H].unbind(0) for j in range(3)] if Q1 is not None else None
    groups, Qs = [], []
    for grp, w in zip(plan.groups, ws):
        k, ps, a = len(grp.children), grp.parent_slot, grp.first
        G = xp.new_empty(B, 2 * k * H)
        Q = POOL.empty((T, B, 3 * k * H), dt, dev) if keep else None
        Qs.append(Q)
        if k == 1:  # [B, H] views: one child needs no broadcast
            gate, cand, s_pb, kids, cdim = G[:, :H], G[:, H:], S[:, ps], S[:, a], 1
            qv = None if Q is None else Q.view(T, B, 3, H)
        else:
            Gv = G.view(B, 2, k, H)  # [B, 2kH] -> [B, 2, k, H]
            # [steps, k, B, H] -> [steps, B, k, H] views, to match the children's [B, k, H] in G
            gate, cand, cdim = Gv[:, 0], Gv[:, 1], 1
            s_pb, kids = S[:, ps:ps + 1].transpose(1, 2), S[:, a:a + k].transpose(1, 2)
            qv = None if Q is None else Q.view(T, B, 3, k, H)
        acts = [(op, c) for (op, _), c in zip(grp.runs, _runs(cand, grp.runs, cdim)) if op is not None]
        coef = None
        if qv is not None:  # (run op, g run, f run, Q's dh~ run per step), Q's dc and 1 - g per step
            runs = [(op, g_run, f_run, q_run.unbind(0)) for (op, _), g_run, f_run, q_run in
                    zip(grp.runs, _runs(gate, grp.runs, cdim), _runs(cand, grp.runs, cdim),
                        _runs(qv[:, :, 1], grp.runs, cdim + 1))]
            coef = (runs, qv[:, :, 0].unbind(0), qv[:, :, 2].unbind(0))
        groups.append((w, G, gate, cand, per_step(S[:, ps]), per_step(s_pb), per_step(kids), acts, coef))
    loose = plan.loose_slots
    loose_idx = None if len(loose) == 1 else plan.loose_index(dev)
    inv_loose = 1.0 / len(loose)
    s_all = per_step(S)
    xps, outs = xp.unbind(0), out.unbind(0)
    act1 = plan.act1
    sigmoid_grad = torch.ops.aten.sigmoid_backward.grad_input
    g1, gate1, cand1, s1 = node1
    for t in range(T):
        h_in = h if mask is None else h * mask
        torch.addmm(xps[t], h_in, w1, out=g1)  # [B, 2H]: gate | candidate of n1
        gate1.sigmoid_()
        if act1 is not None:
            act1.inplace(cand1)  # type: ignore[misc]
        torch.lerp(h, cand1, gate1, out=s1[t])
        if q1 is not None:
            _coefficients_step(act1, gate1, cand1, h, q1[0][t], q1[1][t], q1[2][t], one)
        for w, G, gate, cand, s_p, s_pb, kids, acts, coef in groups:
            torch.mm(s_p[t], w, out=G)  # [B, H] x [H, 2kH]
            gate.sigmoid_()
            for op, c in acts:
                op.inplace(c)  # type: ignore[misc]
            # s_l = lerp(s_p, f(h~), sigmoid(c)) for all k children at once, into their slots.
            torch.lerp(s_pb[t], cand, gate, out=kids[t])
            if coef is not None:
                runs, q_gate, q_start = coef
                for op, g_run, f_run, q_run in runs:
                    _act_grad(op, g_run, f_run, q_run[t])  # g * act'(h~), from f
                d_gate = torch.sub(cand, s_pb[t], out=q_gate[t])
                sigmoid_grad(d_gate, gate, grad_input=d_gate)  # (f - s_p) g (1 - g)
                torch.sub(one, gate, out=q_start[t])  # 1 - g
        # h_t = mean of the loose ends (Pham et al. 2018, Sec. 2.1).
        if loose_idx is None:
            outs[t].copy_(s_all[t][loose[0]])
        else:
            torch.sum(s_all[t].index_select(0, loose_idx), 0, out=outs[t]).mul_(inv_loose)
        h = outs[t]
    return out, S, Q1, Qs


def _use_native(t: Tensor) -> bool:
    """Whether the loop on tensors like ``t`` runs in C++ (float32 on the CPU, when it could be built)."""
    # Under torch.compile (a FixedCell's option) the PyTorch loop is traced instead: the custom op
    # has no fake implementation for the compiler.
    return (t.device.type == "cpu" and t.dtype == torch.float32 and not torch.compiler.is_compiling()
            and native.available())


def _native_forward(plan: ENASPlan, xp: Tensor, h: Tensor, mask: Optional[Tensor], w1: Tensor,
                    ws: Sequence[Tensor], keep: bool) -> tuple[Tensor, Optional[Tensor], Optional[Tensor], list[Tensor]]:
    """:func:`_loop_forward` in C++ (``enas_rnn/native/enas_loop.cpp``). Its own layout for backward:
    S [N, T, B, H] (parents' states, node-major), P1 [T, B, 2H] and Ps[g] [T, B, 2kH] holding
    (sigmoid(c) | f(h~)) per step, which its backward turns into the pre-activations' gradients."""
    T, B = xp.shape[0], xp.shape[1]
    H = h.shape[-1]
    dt, dev = xp.dtype, xp.device
    S = POOL.empty((1 + len(plan.keys), T, B, H), dt, dev) if keep else None
    P1 = POOL.empty((T, B, 2 * H), dt, dev) if keep else None
    Ps = [POOL.empty((T, B, 2 * k * H), dt, dev) for k in plan.sizes] if keep else []
    out = xp.new_empty(T, B, H)
    groups, act1, loose, clip = plan.native_meta()
    native.ops().loop_forward(xp.contiguous(), h.contiguous(), mask, w1, list(ws), groups, act1, loose, clip,
                              S, P1, Ps, out)
    return out, S, P1, Ps


def _coefficients_step(op: Optional[Op], gate: Tensor, cand: Tensor, s_p: Tensor, q_gate: Tensor, q_cand: Tensor,
                       q_start: Tensor, one: Tensor) -> None:
    """One node's backward coefficients (see :class:`_ENASLoop`) from g, f and s_p."""
    _act_grad(op, gate, cand, q_cand)
    torch.sub(cand, s_p, out=q_gate)
    torch.ops.aten.sigmoid_backward.grad_input(q_gate, gate, grad_input=q_gate)
    torch.sub(one, gate, out=q_start)


def _transposed(w: Tensor) -> Tensor:
    """w^T [N, K] as a contiguous (pooled) copy: the per-step backward GEMM runs ~30 % faster on it
    than on the transposed view."""
    wt = POOL.empty((w.shape[1], w.shape[0]), w.dtype, w.device)
    return wt.copy_(w.t())


def _reverse_loop(plan: ENASPlan, d_out: Tensor, h0: Tensor, mask: Optional[Tensor], w1: Tensor,
                  ws: Sequence[Tensor], S: Tensor, Q1: Tensor, Qs: Sequence[Tensor]) -> Tensor:
    """The backward's reverse loop (see :class:`_ENASLoop`): turns Q1 and Qs in place into
    (dL/dc | dL/dh~ | -) per step and returns dL/dh0."""
    T, N, B, H = S.shape
    d_outs = d_out.unbind(0)
    # Per step and group, Q [B, 3, k, H] holds (from forward) the coefficients of (dL/dc | dL/dh~
    # | dL/ds_p through the lerp's start), so ONE product Q * ds gives all three; Q's first 2kH
    # columns, dPre = [dc | dh~], are then the GEMMs' operand (rows 3kH apart).
    dxp = Q1[:, :, :2 * H]  # [T, B, 2H] (rows 3H apart): dL/d(n1's pre-activation) = dL/dxp
    dPs = [Q[:, :, :2 * k * H] for Q, k in zip(Qs, plan.sizes)]  # [T, B, 2kH] each
    # The reverse loop: per step and group one product, a sum over the children, one GEMM.
    dS = S.new_empty(N, B, H)  # one step's dL/ds; every slot is written before it is read
    groups = []
    for grp, w, Q, dP in zip(plan.groups, ws, Qs, dPs):
        k, a = len(grp.children), grp.first
        if k == 1:  # [B, H] views: one child needs no sum
            ds, Qv = dS[a], Q.view(T, B, 3, H)
        else:
            ds, Qv = dS[a:a + k].transpose(0, 1), Q.view(T, B, 3, k, H)  # [k, B, H] -> [B, k, H]
        groups.append((_transposed(w), k, ds.unsqueeze(1), dS[grp.parent_slot], Qv.unbind(0),
                       Qv[:, :, 2].unbind(0), dP.unbind(0)))
    groups.reverse()  # children before parents
    w1t = _transposed(w1)
    Q1v, direct1, dxps = Q1.view(T, B, 3, H).unbind(0), Q1[:, :, 2 * H:].unbind(0), dxp.unbind(0)
    loose = plan.loose_slots
    loose_idx = plan.loose_index(S.device)
    inv_loose = 1.0 / len(loose)
    ds1_b = dS[0].unsqueeze(1)
    d_h = torch.zeros_like(h0)  # dL/dh_t from step t+1
    for t in range(T - 1, -1, -1):
        d_h.add_(d_outs[t])
        if len(loose) == 1:
            dS[loose[0]].copy_(d_h)
        else:
            dS.index_copy_(0, loose_idx, d_h.mul_(inv_loose).expand(len(loose), B, H))
        for wt, k, ds_b, d_p, Qv, direct, dP in groups:
            Qv[t].mul_(ds_b)  # [B, 3, (k,) H] * [B, 1, (k,) H]: (dc | dh~ | ds_p via the lerp's start)
            # d_p = sum_k ds (1 - g) + [dc | dh~] @ W^T: [B, 2kH] x [2kH, H], written once.
            torch.addmm(direct[t] if k == 1 else direct[t].sum(1), dP[t], wt, out=d_p)
        Q1v[t].mul_(ds1_b)
        if mask is None:
            d_h = torch.addmm(direct1[t], dxps[t], w1t)
        else:
            d_h = torch.addcmul(direct1[t], torch.mm(dxps[t], w1t), mask)
    return d_h


class _ENASLoop(torch.autograd.Function):
    """The enas cell's time loop with a hand-written backward (a fused RNN kernel in PyTorch ops).

    Autograd would record ~6 nodes per cell node and step; this records one node for the whole
    window and runs the reverse loop itself. Everything that does not depend on the incoming
    gradient is computed in the forward, while it is in cache: per step and group the coefficients
    Q = (sigmoid'(c) (f - s_p) | g f'(h~) | 1 - g) [B, 3, k, H], so that per step and group the
    backward is one product, a sum over the children and one GEMM::

        ds = dL/ds_children [B, k, H];  [dc | dh~ | direct] = Q * ds   (one broadcast product)
        ds_p = sum_k direct + [dc | dh~] @ W^T                          (one GEMM, the sum as its C)

    Every node is either a loose end (its gradient comes from h_t) or a parent (from its one group
    of children), never both, so each slot of dS is written once per step and never zero-filled.
    The weights' gradients are one GEMM per group over all steps: dW = S_p^T [H, T*B] x dPre
    [T*B, 2kH], as fused cuDNN/oneDNN RNN kernels do. Not twice differentiable.

    The C++ loop (float32 on the CPU, :func:`_native_forward`) runs the same algorithm with its own
    layout: it keeps (g | f) per step instead of Q (its backward forms the coefficients from them and
    the parent's state, in one fused pass per group) and only the parents' states, node-major
    (S [N, T, B, H]), so that a parent's states are one [T*B, H] matrix for dW without a copy.
    """

    @staticmethod
    def forward(ctx: Any, plan: ENASPlan, xp: Tensor, h0: Tensor, mask: Optional[Tensor], w1: Tensor,
                *ws: Tensor) -> Tensor:  # type: ignore[override]
        dt = xp.dtype  # under autocast the hoisted GEMM ran in half precision: so does the loop
        w1c, wsc = w1.to(dt), [w.to(dt) for w in ws]
        h0c = h0.to(dt)
        maskc = None if mask is None else mask.to(dt)
        ctx.native = _use_native(xp)
        loop = _native_forward if ctx.native else _loop_forward
        out, S, Q1, Qs = loop(plan, xp, h0c, maskc, w1c, wsc, keep=True)
        ctx.plan = plan
        ctx.save_for_backward(h0c, maskc, w1c, *wsc, out, S, Q1, *Qs)
        ctx.dtypes = (h0.dtype, w1.dtype, [w.dtype for w in ws])
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, d_out: Tensor) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        plan: ENASPlan = ctx.plan
        n_g = len(plan.groups)
        h0, mask, w1, *rest = ctx.saved_tensors
        ws, (out, S, Q1), Qs = rest[:n_g], rest[n_g:n_g + 3], rest[n_g + 3:]
        d_out = d_out.to(out.dtype)
        if ctx.native:  # S [N, T, B, H]; Q1, Qs hold (g | f) per step and become dL/d(pre-activation)
            N, T, B, H = S.shape
            groups_meta, act1, loose_meta, clip = plan.native_meta()
            d_h = native.ops().loop_backward(d_out, h0, mask, w1, list(ws), groups_meta, act1, loose_meta, clip,
                                             S, out, Q1, list(Qs))
            # A custom op's writes do not bump version counters: do it, so that a second backward
            # through a retained graph fails loudly, as with the PyTorch loop's in-place products.
            torch.autograd.graph.increment_version([Q1, *Qs])
            dxp, dPs = Q1, list(Qs)  # [T, B, 2H], [T, B, 2kH]
            parent_states = [S[grp.parent_slot].view(T * B, H) for grp in plan.groups]  # a view
        else:  # S [T, N, B, H]; Q1, Qs hold the coefficients (see above)
            T, N, B, H = S.shape
            d_h = _reverse_loop(plan, d_out, h0, mask, w1, ws, S, Q1, Qs)
            dxp = Q1[:, :, :2 * H]  # [T, B, 2H] (rows 3H apart): dL/d(n1's pre-activation) = dL/dxp
            dPs = [Q[:, :, :2 * k * H] for Q, k in zip(Qs, plan.sizes)]  # [T, B, 2kH] each
            # [T, B, H] -> [T*B, H] (a copy: S is step-major)
            parent_states = [S[:, grp.parent_slot].reshape(T * B, H) for grp in plan.groups]
        # The weights' gradients, one GEMM each over all steps: [H, T*B] x [T*B, 2kH].
        need = ctx.needs_input_grad
        h0_dt, w1_dt, ws_dt = ctx.dtypes
        dw1 = None
        if need[4]:
            h_in = POOL.empty((T, B, H), out.dtype, out.device)  # h_{t-1} for every t, masked
            h_in[0].copy_(h0)
            h_in[1:].copy_(out[:-1])
            if mask is not None:
                h_in.mul_(mask)
            dw1 = h_in.view(T * B, H).t().mm(dxp.reshape(T * B, 2 * H)).to(w1_dt)  # reshape: a view
        dws = []
        for j, (grp, dP) in enumerate(zip(plan.groups, dPs)):
            if not need[5 + j]:
                dws.append(None)
                continue
            dws.append(parent_states[j].t().mm(dP.reshape(T * B, -1)).to(ws_dt[j]))  # reshape: a view
        return (None, dxp if need[1] else None, d_h.to(h0_dt) if need[2] else None, None, dw1, *dws)


def run_enas(
    plan: ENASPlan, weights: tuple[Any, ...], x: Tensor, hidden: Hidden, mask: Tensor | None, clip: float | None,
) -> tuple[Tensor, Hidden]:
    """Run a plan. weights = (w_hw_x [E, 2H], w_hw_h [H, 2H], w_groups[g] [H, 2*k_g*H]).

    Node update (Pham et al. 2018, Sec. 2.1; enas_lm): [c; h~] = W s_j,
    s_l = s_j + sigmoid(c) * (f(h~) - s_j) = lerp(s_j, f(h~), sigmoid(c)).
    The x_t part of node 1 is one GEMM over the whole sequence; the loop runs in
    :class:`_ENASLoop` (its own backward) or, without autograd, in :func:`_loop_forward` directly.
    """
    w_hw_x, w_hw_h, w_groups = weights
    T, B, E = x.shape
    h, c_dummy = hidden
    H = h.shape[-1]
    if T == 0:
        return x.new_empty(0, B, H), (h, c_dummy)
    if clip is not None:
        h = F.hardtanh(h, -clip, clip)  # once per forward: keeps every state within [-clip, clip]
    # Hoisted x_t part of the highway node: [T*B, E] x [E, 2H] -> [T, B, 2H] (no bias, as enas_lm).
    xp = torch.mm(x.reshape(T * B, E), w_hw_x).view(T, B, 2 * H)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (xp, h, w_hw_h, *w_groups)):
        out = _ENASLoop.apply(plan, xp, h, mask, w_hw_h, *w_groups)
    else:
        dt = xp.dtype
        loop = _native_forward if _use_native(xp) else _loop_forward
        out = loop(plan, xp, h.to(dt), None if mask is None else mask.to(dt), w_hw_h.to(dt),
                   [w.to(dt) for w in w_groups], keep=False)[0]
    return out, (out[-1], c_dummy)


# ============================================================================ the space
class ENASSpace(SearchSpace):
    """The ``enas`` space: node 1's activation, then (earlier node, act) for nodes 2..N.

    Pham et al. (2018) use N = 12 for Penn Treebank; ``enas_paper`` needs ``num_nodes=12``.
    """

    name: ClassVar[str] = "enas"
    inputs: ClassVar[tuple[str, ...]] = ("xh",)
    output_names: ClassVar[tuple[str, ...]] = ()
    picture_note: ClassVar[str] = "edge label: f in s_l = s_j + σ(c)·(f(h~) − s_j); h_t = mean of loose ends"
    reference: ClassVar[Optional[str]] = "enas_paper"
    named: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        # The ENAS Penn Treebank cell (Pham et al. 2018, Fig. 6): 12 nodes, only tanh and ReLU,
        # h_t the mean of 6 loose ends. Decoded from the authors' code, melodyguan/enas
        # scripts/ptb_final.sh: fixed_arc="0 0 0 1 1 2 1 2 0 2 0 5 1 1 0 6 1 8 1 8 1 8 1" with
        # --child_rhn_depth=12, read by src/ptb/ptb_enas_child.py::_rhn_fixed as
        # [act of node 0] + [(prev, act) for nodes 1..11], act ids 0=tanh 1=relu 2=identity
        # 3=sigmoid, nodes 0-based (here 1-based: prev p -> n{p+1}). Cross-check: the same graph
        # (relabelled) is carpedm20/ENAS-pytorch dag.json.
        "enas_paper": {
            "space": "enas",
            "nodes": [
                {"input": "xh", "act": "tanh"},   # node 0: highway over [x_t; h_{t-1}]
                {"input": "n1", "act": "tanh"},   # (0, 0)
                {"input": "n2", "act": "relu"},   # (1, 1)
                {"input": "n3", "act": "relu"},   # (2, 1)
                {"input": "n3", "act": "tanh"},   # (2, 0)
                {"input": "n3", "act": "tanh"},   # (2, 0)
                {"input": "n6", "act": "relu"},   # (5, 1)
                {"input": "n2", "act": "tanh"},   # (1, 0)
                {"input": "n7", "act": "relu"},   # (6, 1)
                {"input": "n9", "act": "relu"},   # (8, 1)
                {"input": "n9", "act": "relu"},   # (8, 1)
                {"input": "n9", "act": "relu"},   # (8, 1)
            ],
            "source": (
                "Pham et al. 2018, Efficient Neural Architecture Search via Parameter Sharing, "
                "Fig. 6 (PTB cell); arc from github.com/melodyguan/enas scripts/ptb_final.sh "
                "fixed_arc='0 0 0 1 1 2 1 2 0 2 0 5 1 1 0 6 1 8 1 8 1 8 1' (rhn_depth=12)"
            ),
        },
    }

    # ------------------------------------------------------------------ genotype semantics
    @classmethod
    def parse_node(cls, raw: Any, index: int) -> ENASNode:
        where = f"node {node_ref(index)}"
        if isinstance(raw, ENASNode):
            return raw
        if not isinstance(raw, Mapping):
            raise _err(where, f"expected an enas node {{'input', 'act'}}, got {raw!r}")
        missing = [k for k in ("input", "act") if k not in raw]
        if missing:
            raise _err(where, f"missing key(s) {missing}; an enas node needs 'input' and 'act'")
        return ENASNode(str(raw["input"]), str(raw["act"]))

    @classmethod
    def validate(cls, g: Genotype) -> None:
        for i, node in enumerate(g.nodes, start=1):
            where = f"node {node_ref(i)}"
            if not isinstance(node, ENASNode):
                raise _err(where, f"{node!r} is not an enas node")
            # n1 is the highway over [x_t; h_{t-1}]; later nodes read one earlier node.
            allowed = ["xh"] if i == 1 else [node_ref(j) for j in range(1, i)]
            if node.input not in allowed:
                what = "n1 is the highway node and must read 'xh'" if i == 1 else "an enas node reads one earlier node"
                raise _err(where, f"input {node.input!r} is not valid ({what}); valid inputs: {options(allowed)}")
            if node.act not in ACTIVATIONS:
                raise _err(where, f"activation {node.act!r} is unknown; valid activations: {options(ACTIVATIONS)}")
        if len(g.outputs):
            raise GenotypeError(f"outputs: an enas genotype has no outputs (h_t is the mean of the loose ends), "
                                f"got {dict(g.outputs)}")

    @classmethod
    def live_nodes(cls, g: Genotype) -> tuple[int, ...]:
        """Every node: each reaches h_t through the loose ends that descend from it."""
        return tuple(range(1, g.num_nodes + 1))

    @classmethod
    def loose_ends(cls, g: Genotype) -> tuple[int, ...]:
        """1-based indices of nodes no other node reads (their mean is h_t)."""
        read = {parse_node_ref(n.input) for n in g.nodes}
        return tuple(i for i in range(1, g.num_nodes + 1) if i not in read)

    @classmethod
    def canonical(cls, g: Genotype) -> Genotype:
        """The cell is a tree rooted at n1 (each node reads one parent): renumbered in pre-order with
        children sorted by their subtree's signature - exact."""
        children: dict[int, list[int]] = {i: [] for i in range(1, g.num_nodes + 1)}
        for i in range(2, g.num_nodes + 1):
            parent = parse_node_ref(g.nodes[i - 1].input)
            assert parent is not None
            children[parent].append(i)
        sig: dict[int, str] = {}
        for i in range(g.num_nodes, 0, -1):  # children have larger indices: bottom-up
            kids = sorted(sig[k] for k in children[i])
            text = f"{g.nodes[i - 1].act}({','.join(kids)})"
            sig[i] = hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]
        order: list[int] = []

        def visit(i: int) -> None:
            order.append(i)
            for k in sorted(children[i], key=lambda k: sig[k]):
                visit(k)

        visit(1)
        new_id = {old: pos + 1 for pos, old in enumerate(order)}
        nodes = []
        for old in order:
            node = g.nodes[old - 1]
            src = node.input if old == 1 else node_ref(new_id[parse_node_ref(node.input)])  # type: ignore[index]
            nodes.append(ENASNode(src, node.act))
        return Genotype("enas", tuple(nodes))

    @classmethod
    def analyse(cls, g: Genotype) -> CellAnalysis:
        """Every enas cell reads the input: n1 mixes f(W[x_t; h_{t-1}]) into h_{t-1} with a gate in
        (0, 1), and each later node mixes its parent the same way, so no value is identically zero
        and h_t (a mean of nodes) depends on x. The space has no cell state (``has_memory`` None).

        Boundedness (worst case over the weights, guard off, any starting state): a node update is a
        convex combination, s_l = (1 - g) s_j + g f(h~) with g in (0, 1), so |s_l| <= max(|s_j|, |f(h~)|),
        and the mean of the loose ends is at most their largest. Every value is bounded by
        max(k, b*H), H = |h_(t-1)|: h_(t-1) itself is (0, 1); a tanh/sigmoid candidate is (1, 0); an
        identity/relu candidate is W s_j (n1: W[x_t; h_(t-1)]), which the weights scale by any factor:
        (inf*k_j, inf*b_j) (n1: (inf, inf)); a lerp takes the larger k and the larger b. Since n1 mixes
        in h_(t-1), every node has b >= 1, so h_t <= max(k, b*H) is bounded (by max(k, |h_0|)) when every
        node's activation is tanh or sigmoid (b = 1), and unbounded (b = inf: the weights can scale
        h_t by any factor per step) as soon as one node uses identity or relu. There is no linear class.
        """
        offender = next((i for i, node in enumerate(g.nodes, 1) if node.act not in BOUNDED), None)
        if offender is None:
            return CellAnalysis(True, None, growth="bounded", growth_h="bounded")
        src = "[x_t; h_(t-1)]" if offender == 1 else g.nodes[offender - 1].input
        why = (f"{node_ref(offender)} = highway({g.nodes[offender - 1].act}) from {src}: an identity/relu "
               f"candidate is W·{'xh' if offender == 1 else src}, which the weights scale by any factor, and it "
               "feeds h_t back into the next step")
        return CellAnalysis(True, None, growth="unbounded", growth_h="unbounded", growth_reason=why)

    @classmethod
    def formula(cls, g: Genotype) -> list[str]:
        out = []
        for i, node in enumerate(g.nodes, 1):
            src = "[x_t; h_(t-1)]" if i == 1 else node.input
            out.append(f"{node_ref(i)} = highway({node.act}) from {src}")
        out.append("h_t = mean(" + ", ".join(node_ref(i) for i in cls.loose_ends(g)) + ")")
        return out

    @classmethod
    def structure(cls, g: Genotype) -> tuple[dict[str, str], list[str], list[tuple[str, str, str]]]:
        nodes = {node_ref(i): "highway" for i in range(1, g.num_nodes + 1)}
        edges = [(n.input, node_ref(i), n.act) for i, n in enumerate(g.nodes, 1)]
        edges += [(node_ref(i), "avg", "") for i in cls.loose_ends(g)]
        return nodes, ["xh", "avg"], edges

    @classmethod
    def graph(cls, g: Genotype) -> tuple[list[GraphBox], list[GraphEdge]]:
        boxes = [GraphBox("xh", "x_t, h_{t-1}", "input", 0)]
        edges: list[GraphEdge] = []
        depth = {"xh": 0}
        for i, node in enumerate(g.nodes, start=1):
            ref = node_ref(i)
            depth[ref] = 1 + depth[node.input]
            boxes.append(GraphBox(ref, f"{ref}\nhighway" if i == 1 else ref, "node", depth[ref]))
            edges.append(GraphEdge(node.input, ref, node.act, node.act))
        last = 1 + max(depth.values())
        boxes += [GraphBox("avg", "mean", "avg", last), GraphBox("out_h", "h_t", "output", last + 1)]
        edges += [GraphEdge(node_ref(i), "avg", "", None) for i in cls.loose_ends(g)]
        edges.append(GraphEdge("avg", "out_h", "", None))
        return boxes, edges

    # ------------------------------------------------------------------ execution
    @classmethod
    def bank_layout(cls, input_size: int, hidden_size: int, rows: int) -> dict[str, tuple[tuple[int, ...], Optional[int]]]:
        E, H = input_size, hidden_size
        return {"w_hw_x": ((E, 2, H), None), "w_hw_h": ((H, 2, H), None), "w_edge": ((H, 2, rows, H), 2)}

    @classmethod
    def shared_num_rows(cls, num_nodes: int) -> int:
        return num_nodes * (num_nodes - 1) // 2  # one row per edge (l, j), j < l

    @classmethod
    def shared_row(cls, key: tuple[int, int]) -> int:
        # Edge (l, j), 1 <= j < l <= N, numbered row-major over l: (l-1)(l-2)/2 + (j-1).
        l, j = key
        return (l - 1) * (l - 2) // 2 + (j - 1)

    @classmethod
    def compile(cls, g: Genotype, clip: Optional[float]) -> ENASPlan:
        return compile_enas(g, clip)

    @classmethod
    def gather(cls, plan: ENASPlan, banks: Mapping[str, Tensor], rows: Any, input_size: int,
               hidden_size: int) -> tuple[Any, ...]:
        # One gather per group, straight into its GEMM's layout:
        # [H, 2, P, H] (or P rows [H, 2, H]) -> [H, 2, k, H] -> [H, 2kH]
        # (columns: gates of the k children | their candidates). A one-child group's weight is a
        # view of its row; a larger group's is one copy of its k rows (its backward: one per row).
        E, H = input_size, hidden_size
        idx = list(range(rows[0], rows[0] + rows[1])) if isinstance(rows, tuple) else list(rows)
        w_groups, first = [], 0
        for k in plan.sizes:
            sub = idx[first:first + k]
            first += k
            arg = (sub[0], k) if sub == list(range(sub[0], sub[0] + k)) else sub
            w_groups.append(take(banks["w_edge"], 2, arg).reshape(H, 2 * k * H))
        return banks["w_hw_x"].reshape(E, 2 * H), banks["w_hw_h"].reshape(H, 2 * H), tuple(w_groups)

    run = staticmethod(run_enas)

    @classmethod
    def export_parts(cls, plan: ENASPlan, g: Genotype, clip: Optional[float]) -> ExportParts:
        P = len(plan.keys)
        params = [
            "# Highway node n1 over [x_t; h_(t-1)]: columns (gate c | candidate h~), no bias (enas_lm).",
            "self.w_hw_x = nn.Parameter(torch.empty(input_size, 2, hidden_size))",
            "self.w_hw_h = nn.Parameter(torch.empty(hidden_size, 2, hidden_size))",
            "# One edge row per node l > 1 reading node j: s_j @ w_edge[:, :, r] -> (gate c, candidate h~).",
            f"self.w_edge = nn.Parameter(torch.empty(hidden_size, 2, {P}, hidden_size))",
        ]
        project = [
            "T, B, E = x.shape",
            "H = self.hidden_size",
            "# [T*B, E] x [E, 2H] -> [T*B, 2H] -> [T, B, 2H]: the x_t part of the highway node n1",
            "return torch.mm(x.reshape(T * B, E), self.w_hw_x.reshape(E, 2 * H)).view(T, B, 2 * H)",
        ]
        weights = ["H = self.hidden_size", "return (", "    self.w_hw_h.reshape(H, 2 * H),  # [H, 2, H] -> [H, 2H]"]
        names = ["w_hw_h"]
        first = 0
        layout = []
        for grp in plan.groups:
            k = len(grp.children)
            weights.append(f"    self.w_edge[:, :, {first}:{first + k}].reshape(H, {2 * k} * H),"
                           f"  # edges out of n{grp.parent}: [H, 2, {k}, H] -> [H, 2*{k}*H]")
            layout.append(f"n{grp.parent} -> rows {first}..{first + k - 1}")
            names.append(f"w_n{grp.parent}")
            first += k
        weights.append(")")
        if clip is None:
            guard = ["return h, c  # no guard"]
        else:
            guard = ["# once per forward: every later state is a convex mix of values in [-STATE_CLIP, STATE_CLIP]",
                     "return F.hardtanh(h, -STATE_CLIP, STATE_CLIP), c  # hardtanh = clamp"]

        def act(op: Optional[Op], v: str) -> str:
            return v if op is None else op.code.format(a=v)

        step = ["B, H = h.shape", f"{', '.join(names)}{',' if len(names) == 1 else ''} = w",
                "gate, cand = torch.addmm(xp_t, h, w_hw_h).view(B, 2, H).unbind(1)  # [B, 2H] -> [B, 2, H] -> gate, candidate",
                f"n1 = torch.lerp(h, {act(plan.act1, 'cand')}, torch.sigmoid(gate))"
                f"  # n1 = highway({g.nodes[0].act}) over [x_t; h_(t-1)]"]
        for grp in plan.groups:
            k, p = len(grp.children), grp.parent
            who = ", ".join(node_ref(i) for i in grp.children)
            step.append(f"gate, cand = torch.mm(n{p}, w_n{p}).view(B, 2, {k}, H).unbind(1)"
                        f"  # children of n{p} ({who}): [B, {k}, H] each")
            ops = [op for op, n in grp.runs for _ in range(n)]
            for j, (child, op) in enumerate(zip(grp.children, ops)):
                step.append(f"n{child} = torch.lerp(n{p}, {act(op, f'cand[:, {j}]')}, torch.sigmoid(gate[:, {j}]))"
                            f"  # n{child} = highway({g.nodes[child - 1].act}) from n{p}")
        refs = ", ".join(node_ref(i) for i in plan.loose)
        if len(plan.loose) == 1:
            step.append(f"return {refs}, c  # h_t = {refs}, the only loose end; c passes through")
        else:
            step.append(f"h_t = torch.stack([{refs}]).sum(0) * (1.0 / {len(plan.loose)})  # h_t = mean of the loose ends")
            step.append("return h_t, c  # the enas space has no cell state: c passes through")
        layout = ["# Edge rows of w_edge (FixedCell's order): " + ", ".join(layout)] if layout else []
        return ExportParts(params, project, weights, guard, step, layout)

    # ------------------------------------------------------------------ decisions
    def _build_decisions(self) -> list[Decision]:
        out = [Decision("n1.act", len(ACTIVATIONS), "act", ACTIVATIONS)]
        for i in range(2, self.num_nodes + 1):
            prev = tuple(node_ref(j) for j in range(1, i))
            out.append(Decision(f"n{i}.src", len(prev), "source", prev))
            out.append(Decision(f"n{i}.act", len(ACTIVATIONS), "act", ACTIVATIONS))
        return out

    def allowed(self, prefix: Sequence[int], require_memory: bool = True, require_bounded: bool = False,
                exclude_degenerate: bool = True) -> Optional[list[bool]]:
        """Constrained decoding: no enas cell is degenerate, and (``require_bounded``) a cell is bounded
        exactly when every node's activation is tanh or sigmoid (see ``analyse``), so each activation
        decision is masked to those two - exact, never a redraw."""
        if require_bounded and self._decisions[len(prefix)].kind == "act":
            return [a in BOUNDED for a in ACTIVATIONS]
        return None

    def decode(self, choices: Sequence[int]) -> Genotype:
        values = self._check_choices(choices)
        nodes = [ENASNode("xh", ACTIVATIONS[values[0]])]
        for k, i in enumerate(range(2, self.num_nodes + 1)):
            src, act = values[1 + 2 * k], values[2 + 2 * k]
            nodes.append(ENASNode(node_ref(src + 1), ACTIVATIONS[act]))
        return Genotype("enas", tuple(nodes))

    def encode(self, genotype: Genotype) -> list[int]:
        """Choices for ``genotype``; it must have exactly ``num_nodes`` nodes (every enas node is
        live: an extra node would be a loose end and change h_t, so there is no padding)."""
        self._check_genotype(genotype)
        if genotype.num_nodes != self.num_nodes:
            raise GenotypeError(
                f"enas genotype has {genotype.num_nodes} nodes but the space has {self.num_nodes}; "
                f"use space.num_nodes={genotype.num_nodes}"
            )
        out = [ACTIVATIONS.index(genotype.nodes[0].act)]
        for node in genotype.nodes[1:]:
            out += [int(node.input[1:]) - 1, ACTIVATIONS.index(node.act)]
        return out


register_space(ENASSpace)
