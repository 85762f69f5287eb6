"""Draw a genotype as an image (matplotlib only, Agg backend; no graphviz).

The space says what to draw (``graph``: boxes and labelled edges); this module lays it out.
Layout: a simple layered drawing, left to right. Column 0 holds the inputs
(``x_t, h_{t-1}`` and, for the lstm space, ``c_{t-1}``); a live node sits in column
``depth`` = longest path from the inputs; the outputs take the last column. Edges carry
the activation: for the lstm space the operand's activation (an edge out of ``xh``
applies its own affine map W[x_t; h_{t-1}] + b first); for the enas space the node's
activation f in s_l = s_j + sigmoid(c) * (f(h~) - s_j). Within a column, nodes are
ordered by the mean row of their sources (one barycentre pass) to cut crossings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from enas_rnn.genotype import Genotype, parse_node_ref

__all__ = ["draw_genotype"]

_ACT_LABEL = {"identity": "id", "tanh": "tanh", "sigmoid": "σ", "relu": "relu"}
_OP_LABEL = {"add": "+", "mul": "×"}
_COLORS = {
    "input": "#cfe2f3",
    "node": "#fff2cc",
    "output": "#d9ead3",
    "avg": "#ead1dc",
}
_ACT_COLORS = {"identity": "#555555", "tanh": "#1f77b4", "sigmoid": "#2ca02c", "relu": "#d62728"}


@dataclass
class _Box:
    key: str
    label: str
    kind: str
    col: int
    row: float = 0.0


@dataclass
class _Edge:
    src: str
    dst: str
    label: str
    color: str


def _graph(g: Genotype) -> tuple[dict[str, _Box], list[_Edge]]:
    """Boxes (inputs, live nodes, outputs) with columns, and labelled edges, as the space draws them."""
    boxes, edges = g.kind.graph(g)
    label = {act: _ACT_LABEL[act] for act in _ACT_LABEL}
    out_boxes = {b.key: _Box(b.key, b.label, b.kind, b.col) for b in boxes}
    out_edges = []
    for e in edges:
        text = e.label
        for act, short in label.items():  # the space names activations; the picture abbreviates them
            if text.startswith(act):
                text = short + text[len(act):].replace(" (W·)", "(W·)")
        out_edges.append(_Edge(e.src, e.dst, text, _ACT_COLORS.get(e.act or "", "#888888")))
    return out_boxes, out_edges


def _assign_rows(boxes: dict[str, _Box], edges: list[_Edge]) -> int:
    """Rows within each column: inputs in order, later columns by barycentre of sources."""
    cols: dict[int, list[_Box]] = {}
    for b in boxes.values():
        cols.setdefault(b.col, []).append(b)
    preds: dict[str, list[str]] = {}
    for e in edges:
        preds.setdefault(e.dst, []).append(e.src)
    tallest = max(len(v) for v in cols.values())
    for col in sorted(cols):
        members = cols[col]
        if col > 0:
            def bary(b: _Box) -> tuple[float, int]:
                rows = [boxes[s].row for s in preds.get(b.key, [])]
                idx = parse_node_ref(b.key)
                return (sum(rows) / len(rows) if rows else 0.0, idx or 0)

            members.sort(key=bary)
        offset = (tallest - len(members)) / 2.0  # centre short columns
        for r, b in enumerate(members):
            b.row = offset + r
    return tallest


def draw_genotype(genotype: Genotype, path: str | Path | None = None, title: str | None = None) -> Figure:
    """Draw ``genotype``; save to ``path`` (format from its suffix) when given. Returns the Figure."""
    boxes, edges = _graph(genotype)
    tallest = _assign_rows(boxes, edges)
    ncols = 1 + max(b.col for b in boxes.values())
    x_gap, y_gap = 2.6, 1.5
    box_w, box_h = 1.5, 0.8
    # Figure size follows the data extent so boxes keep their proportions (no aspect fixing).
    span_x = (ncols - 1) * x_gap + 2 * box_w
    span_y = (tallest - 1) * y_gap + 2.8 * box_h
    scale = 0.85  # inches per data unit
    # A Figure without pyplot: no global figure registry to leak into during long searches.
    fig = Figure(figsize=(max(6.0, span_x * scale), max(2.8, span_y * scale + 0.9)), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()

    def center(b: _Box) -> tuple[float, float]:
        return b.col * x_gap, -b.row * y_gap

    patches = {}
    for b in boxes.values():
        cx, cy = center(b)
        patch = FancyBboxPatch(
            (cx - box_w / 2, cy - box_h / 2),
            box_w,
            box_h,
            boxstyle="round,pad=0.02,rounding_size=0.15",
            facecolor=_COLORS[b.kind],
            edgecolor="#333333",
            linewidth=1.2,
            zorder=3,
        )
        ax.add_patch(patch)
        patches[b.key] = patch
        label = b.label.replace("_{t-1}", "$_{t-1}$").replace("_t", "$_t$")
        ax.text(cx, cy, label, ha="center", va="center", fontsize=9, zorder=4)

    centre_row = (tallest - 1) / 2.0
    # Parallel edges (one source feeding both operands) bend apart; long edges bend a little.
    seen: dict[tuple[str, str], int] = {}
    totals: dict[tuple[str, str], int] = {}
    for e in edges:
        totals[(e.src, e.dst)] = totals.get((e.src, e.dst), 0) + 1
    for e in edges:
        pair = (e.src, e.dst)
        k = seen.get(pair, 0)
        seen[pair] = k + 1
        a, b = boxes[e.src], boxes[e.dst]
        (x1, y1), (x2, y2) = center(a), center(b)
        span = b.col - a.col
        if totals[pair] > 1:
            rad = 0.25 * (1 if k % 2 == 0 else -1)
        elif span > 1:
            # Long edges bow outward (away from the middle row), far enough to clear a box
            # on the chord: the bow height is rad/2 * length. arc3 with rad > 0 bows downward
            # for a left-to-right edge.
            mid_row = (a.row + b.row) / 2
            sign = -1.0 if mid_row < centre_row or (mid_row == centre_row and k % 2 == 0) else 1.0
            rad = sign * min(0.45, max(0.22, 1.3 / (span * x_gap)))
        else:
            rad = 0.0
        arrow = FancyArrowPatch(
            (x1, y1),
            (x2, y2),
            patchA=patches[e.src],
            patchB=patches[e.dst],
            arrowstyle="-|>",
            mutation_scale=12,
            connectionstyle=f"arc3,rad={rad}",
            color=e.color,
            linewidth=1.3,
            zorder=2,
        )
        ax.add_patch(arrow)
        if e.label:
            # Point at t = 0.5 of matplotlib's arc3 quadratic Bezier (control point: chord
            # midpoint + rad * (dy, -dx)), i.e. chord midpoint + rad/2 * (dy, -dx).
            dx, dy = x2 - x1, y2 - y1
            lx, ly = (x1 + x2) / 2 + rad * dy / 2, (y1 + y2) / 2 - rad * dx / 2
            ax.text(
                lx,
                ly,
                e.label,
                ha="center",
                va="center",
                fontsize=8,
                color=e.color,
                zorder=5,
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.9),
            )

    xs = [center(b)[0] for b in boxes.values()]
    ys = [center(b)[1] for b in boxes.values()]
    ax.set_xlim(min(xs) - box_w, max(xs) + box_w)
    ax.set_ylim(min(ys) - box_h * 1.4, max(ys) + box_h * 1.4)
    if title is None:
        name = genotype.name or "cell"
        title = f"{name}  ({genotype.space} space, {len(genotype.live_nodes())} live nodes, {genotype.hash()})"
    ax.set_title(title, fontsize=10)
    fig.text(0.5, 0.02, genotype.kind.picture_note, ha="center", fontsize=8, color="#444444")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    if path is not None:
        fig.savefig(path, bbox_inches="tight")
    return fig
