"""The ``enas`` space (Pham et al. 2018, Sec. 2.1; google-research ``enas_lm``): everything an
enas-space cell means.

Node 1 is a highway node over [x_t; h_{t-1}]; node l > 1 reads one earlier node j and applies an
activation f inside its highway update::

    [c; h~] = W_{l,j} s_j,    s_l = s_j + sigmoid(c) * (f(h~) - s_j) = lerp(s_j, f(h~), sigmoid(c))

h_t is the mean of the loose ends (nodes no other node reads). There is no cell state: ``c`` is a
zero dummy carried through so every core keeps nn.LSTM's (h, c) convention. Decisions::

    node 1: act;   node l > 1: source [n1..n_{l-1}], act

Weight banks: the highway node's ``w_hw_x [E, 2, H]``, ``w_hw_h [H, 2, H]``, and ``w_edge
[H, 2, P, H]`` with one row per edge (l, j): P = N(N-1)/2 in the supernet, N-1 in a fixed cell.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from enas_rnn.genotype import (
    CellAnalysis,
    Genotype,
    GenotypeError,
    node_ref,
    parse_node_ref,
    register_space,
)
from enas_rnn.kernels import ACTIVATIONS, GROUP_ORDER, Op, act_op, hoist, take
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
    """Children of one parent node: one GEMM, one sigmoid, one lerp per activation run."""

    parent: int  # register (= node number) of the parent
    keys: tuple[tuple[int, int], ...]  # (child, parent) edge of each child, in GEMM column order
    runs: tuple[tuple[Optional[Op], int], ...]  # (candidate activation, count) runs over the children
    children: tuple[int, ...]  # child registers, same order as keys
    kernels: tuple[tuple[Any, int], ...]  # runs with the ops' kernels (the hot loop reads these)


@dataclass(frozen=True, eq=False)
class ENASPlan:
    """Program of one genotype, executed by :func:`run_enas` and printed by export.
    Registers: 0 = h_{t-1}, i = node i."""

    act1: Optional[Op]  # candidate activation of the highway node n1
    groups: tuple[ENASGroup, ...]
    loose: tuple[int, ...]  # loose-end registers; h_t is their mean
    num_regs: int
    keys: tuple[tuple[int, int], ...]  # all edges, group after group (the gather order)
    sizes: tuple[int, ...]  # children per group


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
    for parent in sorted(children):  # a parent's value exists before its group runs
        kids = sorted(children[parent], key=lambda i: (GROUP_ORDER.index(g.nodes[i - 1].act), i))
        runs: list[tuple[Optional[Op], int]] = []
        for act in GROUP_ORDER:
            n = sum(1 for i in kids if g.nodes[i - 1].act == act)
            if n:
                runs.append((cand(act), n))
        groups.append(ENASGroup(
            parent=parent, keys=tuple((i, parent) for i in kids), runs=tuple(runs), children=tuple(kids),
            kernels=tuple((None if op is None else op.fn, n) for op, n in runs),
        ))
    return ENASPlan(
        act1=cand(g.nodes[0].act),
        groups=tuple(groups),
        loose=ENASSpace.loose_ends(g),
        num_regs=g.num_nodes + 1,
        keys=tuple(k for grp in groups for k in grp.keys),
        sizes=tuple(len(grp.keys) for grp in groups),
    )


def run_enas(
    plan: ENASPlan, weights: tuple[Any, ...], x: Tensor, hidden: Hidden, mask: Tensor | None, clip: float | None,
) -> tuple[Tensor, Hidden]:
    """Run a plan. weights = (w_hw_x [E, 2H], w_hw_h [H, 2H], w_groups[g] [H, 2*k_g*H]).

    Node update (Pham et al. 2018, Sec. 2.1; enas_lm): [c; h~] = W s_j,
    s_l = s_j + sigmoid(c) * (f(h~) - s_j) = lerp(s_j, f(h~), sigmoid(c)).
    """
    w_hw_x, w_hw_h, w_groups = weights
    T, B, E = x.shape
    h, c_dummy = hidden
    H = h.shape[-1]
    if clip is not None:
        h = F.hardtanh(h, -clip, clip)  # once per forward: keeps every state within [-clip, clip]
    # Hoisted x_t part of the highway node: [T*B, E] x [E, 2H] -> T x [B, 2H] (no bias, as enas_lm).
    xp, w_rec, tape = hoist(x.reshape(T * B, E), w_hw_x, None, w_hw_h, T, B)
    # Node groups have no x part; their base is zeros that carry the deferred weight gradient.
    bases = [hoist(None, None, None, w, T, B) for w in w_groups]
    regs: list[Any] = [None] * plan.num_regs
    act1 = None if plan.act1 is None else plan.act1.fn
    groups, loose = plan.groups, plan.loose
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
                fn = grp.kernels[0][0]
                regs[grp.children[0]] = torch.lerp(
                    s_p.to(c_pre.dtype), c_pre if fn is None else fn(c_pre), torch.sigmoid(g_pre)
                )
                continue
            g_pre, c_pre = out.view(B, 2, k, H).unbind(1)  # [B, 2kH] -> [B, 2, k, H] -> 2 x [B, k, H]
            gate = torch.sigmoid(g_pre)
            s_b = s_p.to(c_pre.dtype).unsqueeze(1)  # [B, H] -> [B, 1, H], broadcast over the k children
            if len(grp.kernels) == 1:
                fn = grp.kernels[0][0]
                parts = torch.lerp(s_b, c_pre if fn is None else fn(c_pre), gate).unbind(1)
            else:
                sizes = [n for _, n in grp.kernels]
                parts = []
                for (fn, _), c_run, g_run in zip(grp.kernels, c_pre.split(sizes, 1), gate.split(sizes, 1)):
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
        and h_t (a mean of nodes) depends on x. The space has no cell state (``has_memory`` None)."""
        return CellAnalysis(True, None)

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
        # One gather for all used edges, then split per group:
        # [H, 2, P, H] -> [H, 2, n_used, H] -> per group [H, 2, k, H] -> [H, 2kH]
        # (columns: gates of the k children | their candidates).
        E, H = input_size, hidden_size
        w_used = take(banks["w_edge"], 2, rows)
        w_groups = tuple(w.reshape(H, 2 * k * H) for w, k in zip(w_used.split(plan.sizes, 2), plan.sizes))
        return banks["w_hw_x"].reshape(E, 2 * H), banks["w_hw_h"].reshape(H, 2 * H), w_groups

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
