"""How far apart two cells are: graph edit distance between their canonical genotypes.

A cell is a labelled DAG (its space's ``structure``): free nodes labelled with their op, anchors
(the inputs ``xh``/``c`` and the outputs) that only ever match themselves, and edges labelled with
the activation they apply. The graph edit distance (Sanfeliu & Fu 1983) is the fewest unit edits -
insert or delete a node or an edge, relabel a node or an edge - that turn one graph into the other,
minimised over all node correspondences. So ``distance(lstm, lstm) == 0``, and a cell one activation
away from the LSTM is at distance 1.

The minimum is found exactly by depth-first branch and bound over the correspondences of the graph
with fewer free nodes (cells have a handful of live nodes); ``max_expansions`` caps pathological
cases, and the result then says it is an upper bound (``exact=False``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

from enas_rnn.genotype import Genotype, get_named

__all__ = ["Distance", "graph_edit_distance", "distance_to_reference"]

Edge = tuple[str, str, str]


@dataclass(frozen=True)
class Distance:
    """A graph edit distance and whether the search that found it finished (else an upper bound)."""

    value: int
    exact: bool


def _pair_costs(edges_a: list[Edge], edges_b: list[Edge], mapping: dict[str, Optional[str]]) -> int:
    """Edge edits under a complete node mapping (A node -> B node, None = deleted)."""
    cost = 0
    mapped: dict[tuple[str, str], Counter] = {}
    for u, v, lab in edges_a:
        fu, fv = mapping[u], mapping[v]
        if fu is None or fv is None:
            cost += 1  # the edge goes with its deleted node
            continue
        mapped.setdefault((fu, fv), Counter())[lab] += 1
    target: dict[tuple[str, str], Counter] = {}
    for u, v, lab in edges_b:
        target.setdefault((u, v), Counter())[lab] += 1
    for pair in set(mapped) | set(target):
        a, b = mapped.get(pair, Counter()), target.get(pair, Counter())
        # Parallel edges: match equal labels, relabel the rest, insert/delete the surplus.
        cost += max(sum(a.values()), sum(b.values())) - sum((a & b).values())
    return cost


def graph_edit_distance(a: Genotype, b: Genotype, max_expansions: int = 20_000) -> Distance:
    """Exact graph edit distance between the canonical forms of two cells of one space."""
    if a.space != b.space:
        raise ValueError(f"cells of different spaces ({a.space}, {b.space}) have no edit distance")
    na, anchors, ea = a.kind.structure(a.canonical())
    nb, _, eb = b.kind.structure(b.canonical())
    if len(na) > len(nb):  # branch over the smaller graph's nodes: far fewer correspondences
        na, nb, ea, eb = nb, na, eb, ea
    order = list(na)  # structure() lists nodes in topological order
    b_nodes = list(nb)
    mapping: dict[str, Optional[str]] = {k: k for k in anchors}
    # A first upper bound: the i-th node of one canonical form to the i-th of the other.
    mapping.update(zip(order, b_nodes))
    used0 = set(b_nodes[: len(order)])
    inserted0 = [k for k in b_nodes if k not in used0]
    best = [sum(na[k] != nb[mapping[k]] for k in order) + _pair_costs(ea, [e for e in eb if e[0] not in inserted0
            and e[1] not in inserted0], mapping) + len(inserted0) + sum(1 for e in eb if e[0] in inserted0 or e[1] in inserted0)]
    for k in order:
        del mapping[k]
    expansions = [0]

    def partial_cost(done: int, used: set[str]) -> int:
        # Node edits so far plus the edits of edges whose endpoints are all decided on both sides.
        cost = 0
        for k in order[:done]:
            tgt = mapping[k]
            cost += 1 if tgt is None or na[k] != nb[tgt] else 0
        decided_a = set(anchors) | set(order[:done])
        decided_b = set(anchors) | used
        sub_a = [e for e in ea if e[0] in decided_a and e[1] in decided_a]
        sub_b = [e for e in eb if e[0] in decided_b and e[1] in decided_b]
        return cost + _pair_costs(sub_a, sub_b, mapping)

    def visit(i: int, used: set[str]) -> None:
        expansions[0] += 1
        if expansions[0] > max_expansions:
            return
        if i == len(order):
            inserted = [k for k in b_nodes if k not in used]
            total = partial_cost(i, used) + len(inserted)
            total += sum(1 for e in eb if e[0] in inserted or e[1] in inserted)
            best[0] = min(best[0], total)
            return
        if partial_cost(i, used) >= best[0]:
            return
        node = order[i]
        # Try same-label targets first: good solutions early make the bound bite.
        cands = sorted((k for k in b_nodes if k not in used), key=lambda k: nb[k] != na[node])
        for k in cands + [None]:
            mapping[node] = k
            visit(i + 1, used | ({k} if k is not None else set()))
        del mapping[node]

    visit(0, set())
    return Distance(best[0], expansions[0] <= max_expansions)


def distance_to_reference(g: Genotype) -> tuple[Optional[str], Optional[Distance]]:
    """The space's reference cell (the LSTM for the lstm space) and ``g``'s distance to it."""
    name = g.kind.reference
    if name is None:
        return None, None
    return name, graph_edit_distance(g, get_named(name))
