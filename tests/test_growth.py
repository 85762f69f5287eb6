"""The boundedness analysis is sound: numeric runs without the guard, large weights, long sequences.

Each cell runs T = 400 steps from the zero state (float64, ``state_clip=None``, weights ~ U(-2, 2),
inputs ~ U(-3, 3)). Beside it the test iterates the analysis' own rules with the cell's actual
weight norms instead of "any size" (|W v| <= ||W|| |v|, tanh/sigmoid <= 1, sums and products of the
bounds, convex combinations <= the larger side), a numeric bound B_t on |h_t| and |c_t|:

* every state stays below B_t (the rules are upper bounds);
* a cell classified ``bounded`` has a B_t that stops growing (B_T = B_{T/2}): it stays below a bound
  that does not grow with T; a ``linear`` cell's B_T is at most about twice B_{T/2};
* many cells classified ``unbounded`` do explode (so the classes mean something and the test can fail).
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from enas_rnn.cells import FixedCell
from enas_rnn.genotype import Genotype, get_named
from enas_rnn.spaces import make_space

E, H, B, T, CHUNK = 4, 6, 3, 400, 10
INIT, XSCALE = 2.0, 3.0
SQUASH = {"tanh": 0.0, "sigmoid": 0.5}  # the activation's value at an exact 0


def _squash(act: str, v: float) -> float:
    return (SQUASH[act] if v == 0 else 1.0) if act in SQUASH else v


def _norm(w: torch.Tensor) -> float:
    """||v -> v @ w|| in the sup norm: the largest column sum of |w| (w [in, out])."""
    return float(w.detach().abs().sum(0).max())


def _lstm_bounds(cell: FixedCell, g: Genotype, x_max: float) -> list[tuple[float, float]]:
    keys = cell.plan().keys
    norms = {}
    for key in keys:
        (r,) = cell.rows([key])
        norms[key] = (_norm(cell.bank_row("w_x", r)), _norm(cell.bank_row("w_h", r)),
                      float(cell.bank_row("bias", r).detach().abs().max()))
    hb = cb = 0.0
    out = []
    for _ in range(T):
        val = {"c": cb}
        for i in g.live_nodes():
            node = g.nodes[i - 1]
            ops = []
            for s, o in enumerate(node.inputs):
                if o.source == "xh":
                    nx, nh, nb = norms[(i, s)]
                    v = nx * x_max + nh * hb + nb
                else:
                    v = val[o.source]
                ops.append(_squash(o.act, v))
            val[f"n{i}"] = ops[0] + ops[1] if node.op == "add" else ops[0] * ops[1]
        hb, cb = val[g.outputs["h"]], val[g.outputs["c"]]
        out.append((hb, cb))
    return out


def _enas_bounds(cell: FixedCell, g: Genotype, x_max: float) -> list[tuple[float, float]]:
    space = g.kind
    w1x, w1h = _norm(cell.w_hw_x[:, 1]), _norm(cell.w_hw_h[:, 1])  # candidate columns of the highway node
    edge = {}
    for l in range(2, g.num_nodes + 1):
        j = int(g.nodes[l - 1].input[1:])
        (r,) = cell.rows([(l, j)])
        edge[l] = _norm(cell.bank_row("w_edge", r)[:, 1])
    loose = space.loose_ends(g)
    hb = 0.0
    out = []
    for _ in range(T):
        act = g.nodes[0].act
        s = {1: max(hb, 1.0 if act in SQUASH else w1x * x_max + w1h * hb)}
        for l in range(2, g.num_nodes + 1):
            node = g.nodes[l - 1]
            sj = s[int(node.input[1:])]
            s[l] = max(sj, 1.0 if node.act in SQUASH else edge[l] * sj)
        hb = max(s[i] for i in loose)
        out.append((hb, 0.0))
    return out


def _run(g: Genotype, seed: int) -> tuple[list[float], list[tuple[int, float]], list[tuple[float, float]]]:
    """(max |h_t| per step, (t, max |c_t|) at chunk ends, numeric bounds (B_h, B_c) per step)."""
    torch.manual_seed(seed)
    cell = FixedCell(g, E, H, state_clip=None, init_range=INIT).double().eval()
    gen = torch.Generator().manual_seed(seed)
    x = XSCALE * (2 * torch.rand(T, B, E, generator=gen, dtype=torch.float64) - 1)
    h, c = cell.init_hidden(B)
    hs, cs = [], []
    with torch.no_grad():
        for k in range(0, T, CHUNK):
            out, (h, c) = cell(x[k:k + CHUNK], (h, c))
            hs += out.abs().flatten(1).max(1).values.tolist()
            cs.append((k + CHUNK - 1, float(c.abs().max())))
    x_max = float(x.abs().max())
    bounds = (_enas_bounds if g.space == "enas" else _lstm_bounds)(cell, g, x_max)
    return hs, cs, bounds


def _sample(space, gen: torch.Generator, bounded: bool) -> Genotype:
    """Uniform over each decision; with ``bounded`` through the space's constrained decoding (enas: only
    tanh/sigmoid), so a space whose bounded cells are rare still gets some."""
    prefix: list[int] = []
    for d in space.decisions():
        mask = space.allowed(prefix, require_bounded=True, exclude_degenerate=False) if bounded else None
        options = [k for k in range(d.num_choices) if mask is None or mask[k]]
        prefix.append(options[int(torch.randint(len(options), (1,), generator=gen))])
    return space.decode(prefix)


def _finite(v: float) -> bool:
    return math.isfinite(v) and v < 1e300


@pytest.mark.slow
@pytest.mark.parametrize("space,nodes,cells", [("lstm", 8, 300), ("lstm", 4, 200), ("enas", 8, 200)])
def test_growth_classes_hold_numerically(space: str, nodes: int, cells: int) -> None:
    sp = make_space(space, nodes)
    gen = torch.Generator().manual_seed(7)
    seen: Counter = Counter()
    exploded = 0
    for k in range(cells):
        g = _sample(sp, gen, bounded=space == "enas" and k % 2 == 0)
        a = g.analysis()
        hs, cs, bounds = _run(g, k)
        seen[a.growth] += 1
        # The rules are upper bounds: every state below the numeric bound while that is finite.
        for t, (hb, cb) in enumerate(bounds):
            if _finite(hb) and math.isfinite(hs[t]):
                assert hs[t] <= hb * (1 + 1e-9) + 1e-12, (g.to_dict(), t, hs[t], hb)
        for t, cv in cs:
            cb = bounds[t][1]
            if _finite(cb) and math.isfinite(cv):
                assert cv <= cb * (1 + 1e-9) + 1e-12, (g.to_dict(), t, cv, cb)
        half, last = bounds[T // 2 - 1], bounds[-1]
        if a.growth in ("bounded", "linear"):
            assert all(math.isfinite(v) for v in hs) and all(math.isfinite(v) for _, v in cs), g.to_dict()
        if a.growth == "bounded":  # a bound that does not grow with T
            assert last[0] <= half[0] * (1 + 1e-12) and last[1] <= half[1] * (1 + 1e-12), (g.to_dict(), half, last)
        elif a.growth == "linear":  # at most linear growth
            assert last[0] <= 2.1 * half[0] + 1 and last[1] <= 2.1 * half[1] + 1, (g.to_dict(), half, last)
        else:
            peak = max([*hs, *(v for _, v in cs)], key=lambda v: v if math.isfinite(v) else math.inf)
            exploded += not math.isfinite(peak) or peak > 1e6
    assert seen["bounded"] >= 20 and seen["unbounded"] >= 20, seen
    if space == "lstm":
        assert seen["linear"] >= 5, seen
    assert exploded >= seen["unbounded"] // 5, (exploded, seen)  # the unbounded class is not a loose label


def test_lstm_is_linear_and_named_cells_in_words() -> None:
    lstm = get_named("lstm").analysis()
    assert (lstm.growth, lstm.growth_h, lstm.growth_c) == ("linear", "bounded", "linear") and not lstm.unbounded()
    assert "grows at most linearly" in lstm.growth_reason and lstm.why(require_bounded=True) == ""
    paper = get_named("enas_paper").analysis()
    assert paper.unbounded() and paper.growth_c is None and "relu" in paper.why(require_bounded=True)
    assert paper.why() == ""  # backwards compatible: only degeneracy unless asked


@pytest.mark.parametrize("exclude_degenerate", [True, False])
def test_constrained_decoding_masks_exactly_the_unbounded_outputs(exclude_degenerate: bool) -> None:
    sp = make_space("lstm", 6)
    gen = torch.Generator().manual_seed(0)
    D = len(sp.decisions())

    def ok(g: Genotype) -> bool:
        return not g.is_unbounded() and not (exclude_degenerate and g.is_degenerate())

    for _ in range(60):
        choices = sp.encode(sp.sample(gen))
        nodes = choices[: D - 2]
        table = [[ok(sp.decode(nodes + [h, c])) for c in range(6)] for h in range(6)]
        first = sp.allowed(nodes, require_bounded=True, exclude_degenerate=exclude_degenerate)
        rows = [any(r) for r in table]
        assert first == (None if all(rows) or not any(rows) else rows)
        h = choices[D - 2]
        second = sp.allowed(nodes + [h], require_bounded=True, exclude_degenerate=exclude_degenerate)
        assert second == (None if all(table[h]) or not any(table[h]) else table[h])
    assert sp.allowed([], require_bounded=True) is None and sp.allowed([0] * (D - 3), require_bounded=True) is None


def test_enas_constrained_decoding_gives_only_bounded_cells() -> None:
    sp = make_space("enas", 8)
    gen = torch.Generator().manual_seed(1)
    cells = [_sample(sp, gen, bounded=True) for _ in range(50)]
    assert all(g.analysis().growth == "bounded" for g in cells)
    assert all(sp.allowed(p) is None for p in ([], [1], [1, 0]))  # nothing to mask without require_bounded


@pytest.mark.slow
def test_every_cell_of_the_gates_template_is_linear_numerically() -> None:
    """template=gates: c_t = sigmoid(.) * tanh(W·xh) + c_(t-1) * sigmoid(.), h_t = tanh(c_t) * sigmoid(.):
    whatever the free nodes compute, the gates squash it, so every cell is "linear" - checked by driving
    random cells with large weights over long sequences."""
    sp = make_space("lstm", 8, "gates")
    gen = torch.Generator().manual_seed(11)
    for k in range(60):
        g = _sample(sp, gen, bounded=False)
        assert g.analysis().growth == "linear" and not g.is_degenerate(), g.to_dict()
        hs, cs, bounds = _run(g, k)
        assert all(math.isfinite(v) and v <= 1.0 for v in hs), g.to_dict()  # |o * tanh(c_t)| <= 1
        assert all(math.isfinite(v) and v <= t + 2 for t, v in cs), g.to_dict()  # |c_t| <= |c_0| + t
        half, last = bounds[T // 2 - 1], bounds[-1]
        assert last[1] <= 2.1 * half[1] + 1, (g.to_dict(), half, last)
