"""What a search space is: its decisions, and everything a genotype of it means.

A search space owns its semantics in one module (``enas_rnn/spaces/<name>.py``): the node type
and its validation, canonical form, degeneracy analysis, the plan a cell executes (compilation,
weight banks, the time loop), the code export prints from that same plan, and the graph that is
drawn. The rest of the package asks the space; nobody branches on a space's name, so a third space
is one new module plus its line in ``enas_rnn/spaces/__init__.py``.

A space is also a flat list of categorical ``Decision``s (for a given number of nodes). A
controller (or random search) produces one integer per decision; ``decode`` turns them into a
``Genotype`` and ``encode`` is its inverse. The controller only sees ``decisions()`` -
``num_choices`` per step and a ``kind`` so it can give sources, activations, ops and outputs their
own embeddings - so adding a space needs no controller change.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Union

import torch
from torch import Tensor

from enas_rnn.genotype import CellAnalysis, Genotype, GenotypeError

__all__ = ["DECISION_KINDS", "Decision", "GraphBox", "GraphEdge", "ExportParts", "SearchSpace", "Rng", "options"]

#: Kinds of decision; a controller may keep one embedding table per kind.
DECISION_KINDS: tuple[str, ...] = ("source", "act", "op", "output")

Rng = Union[random.Random, torch.Generator, int, None]
Hidden = tuple[Tensor, Tensor]


def options(values: Sequence[str]) -> str:
    """Valid values as a comma-separated list, for error messages."""
    return ", ".join(values) if values else "(none)"


@dataclass(frozen=True)
class Decision:
    """One categorical choice: ``num_choices`` options of a given ``kind``.

    ``options`` labels the choices in index order (for logs and plots).
    """

    name: str
    num_choices: int
    kind: str
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in DECISION_KINDS:
            raise ValueError(f"decision {self.name}: unknown kind {self.kind!r}; valid: {DECISION_KINDS}")
        if self.num_choices < 1:
            raise ValueError(f"decision {self.name}: num_choices must be >= 1, got {self.num_choices}")


@dataclass(frozen=True)
class GraphBox:
    """A box of the cell's picture: an input, a live node or an output (``col`` = its depth)."""

    key: str
    label: str
    kind: str  # input | node | output | avg
    col: int


@dataclass(frozen=True)
class GraphEdge:
    """An edge of the cell's picture, labelled with the activation it applies."""

    src: str
    dst: str
    label: str
    act: Optional[str]  # colours the edge; None for plain wiring


@dataclass(frozen=True)
class ExportParts:
    """What the exporter needs from a space to print a standalone ``Cell`` (from the cell's own plan)."""

    params: list[str]  # __init__ lines creating the weight banks (FixedCell's layout)
    project: list[str]  # body of project_input(x) -> [T, B, *]
    weights: list[str]  # body of step_weights() -> tuple of recurrent weights
    guard: list[str]  # body of guard_state(h, c) -> (h, c)
    step: list[str]  # body of step(xp_t, h, c, w) -> (h_t, c_t)
    layout: list[str]  # comment lines naming the weight rows


def _randbelow(rng: random.Random | torch.Generator, n: int) -> int:
    """Uniform integer in [0, n) from either kind of generator."""
    if isinstance(rng, torch.Generator):
        return int(torch.randint(n, (1,), generator=rng).item())
    return rng.randrange(n)


def as_rng(rng: Rng) -> random.Random | torch.Generator:
    """A generator from a seed, a generator, or None (a fresh unseeded one)."""
    if rng is None:
        return random.Random()
    if isinstance(rng, int):
        return random.Random(rng)
    return rng


class SearchSpace:
    """Base class: the semantics of a family of cells (class methods) and, for a number of nodes,
    its decisions with decode/encode/sample (instance methods)."""

    name: ClassVar[str] = ""
    #: Sources a node may read that are not nodes (``xh`` = [x_t; h_{t-1}], ``c`` = c_{t-1}).
    inputs: ClassVar[tuple[str, ...]] = ()
    #: Names of the genotype's explicit outputs (``{"h": "n4", "c": "n3"}``); () when implicit.
    output_names: ClassVar[tuple[str, ...]] = ()
    #: Published cells of this space, as JSON data (never ``eval``-ed).
    named: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: One line under the cell's picture explaining its edge labels.
    picture_note: ClassVar[str] = ""
    #: The named cell distances are measured to (``enas_rnn.distance``), if any.
    reference: ClassVar[Optional[str]] = None
    #: Decision templates the space offers (``space.template``): "none" is the free space; a template
    #: fixes part of every cell and so changes the decisions, never the genotype format.
    templates: ClassVar[tuple[str, ...]] = ("none",)

    # ------------------------------------------------------------------ genotype semantics
    @classmethod
    def parse_node(cls, raw: Any, index: int) -> Any:
        """A node of this space from its JSON form (or the node itself); ``GenotypeError`` if malformed."""
        raise NotImplementedError

    @classmethod
    def validate(cls, g: Genotype) -> None:
        """Raise ``GenotypeError`` naming the node, the bad value and the valid options."""
        raise NotImplementedError

    @classmethod
    def live_nodes(cls, g: Genotype) -> tuple[int, ...]:
        """1-based indices of nodes that contribute to the outputs, ascending."""
        raise NotImplementedError

    @classmethod
    def canonical(cls, g: Genotype) -> Genotype:
        """The canonical spelling: two spellings of one cell give equal results."""
        raise NotImplementedError

    @classmethod
    def analyse(cls, g: Genotype) -> CellAnalysis:
        """Whether h_t can depend on the input and whether the cell has a working memory, with reasons;
        and how fast its state can grow without the guard (bounded, linear, unbounded)."""
        raise NotImplementedError

    @classmethod
    def formula(cls, g: Genotype) -> list[str]:
        """The cell as readable equations, one per line (docstrings, TensorBoard, summaries)."""
        raise NotImplementedError

    @classmethod
    def structure(cls, g: Genotype) -> tuple[dict[str, str], list[str], list[tuple[str, str, str]]]:
        """The cell as a labelled DAG for edit distances: free nodes (key -> label, topological order),
        anchors that only match themselves (inputs, outputs), and (source, target, label) edges."""
        raise NotImplementedError

    @classmethod
    def graph(cls, g: Genotype) -> tuple[list[GraphBox], list[GraphEdge]]:
        """Boxes and labelled edges of the cell's picture (``enas_rnn.viz`` lays them out)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ execution
    @classmethod
    def bank_layout(cls, input_size: int, hidden_size: int, rows: int) -> dict[str, tuple[tuple[int, ...], Optional[int]]]:
        """Weight banks of a cell with ``rows`` rows: name -> (shape, row dimension or None)."""
        raise NotImplementedError

    @classmethod
    def shared_num_rows(cls, num_nodes: int) -> int:
        """Rows of a supernet bank holding every possible weight of ``num_nodes`` nodes."""
        raise NotImplementedError

    @classmethod
    def shared_row(cls, key: tuple[int, int]) -> int:
        """The supernet row of a plan's weight key."""
        raise NotImplementedError

    @classmethod
    def compile(cls, g: Genotype, clip: Optional[float]) -> Any:
        """The plan a cell executes (``plan.keys`` lists its weight keys in bank-row order)."""
        raise NotImplementedError

    @classmethod
    def gather(cls, plan: Any, banks: Mapping[str, Tensor], rows: Any, input_size: int, hidden_size: int) -> tuple[Tensor, ...]:
        """The plan's weights out of the banks, laid out for ``run`` (once per forward)."""
        raise NotImplementedError

    @staticmethod
    def run(plan: Any, weights: tuple[Tensor, ...], x: Tensor, hidden: Hidden, mask: Optional[Tensor],
            clip: Optional[float]) -> tuple[Tensor, Hidden]:
        """Execute a plan over a sequence x [T, B, E] -> (h_t for every t [T, B, H], (h_T, c_T))."""
        raise NotImplementedError

    @classmethod
    def export_parts(cls, plan: Any, g: Genotype, clip: Optional[float]) -> ExportParts:
        """The standalone ``Cell``'s code, printed from the plan ``run`` executes."""
        raise NotImplementedError

    # ------------------------------------------------------------------ decisions
    def __init__(self, num_nodes: int = 8, template: str = "none") -> None:
        if int(num_nodes) < 1:
            raise ValueError(f"{self.name} space: num_nodes must be >= 1, got {num_nodes}")
        if template not in self.templates:
            raise ValueError(f"{self.name} space: template {template!r} is unknown; valid templates: "
                             f"{options(self.templates)}")
        self.num_nodes = int(num_nodes)
        self.template = str(template)
        self._decisions = tuple(self._build_decisions())

    def _build_decisions(self) -> list[Decision]:
        raise NotImplementedError

    def decisions(self) -> list[Decision]:
        """The decision sequence, in the order a controller makes them."""
        return list(self._decisions)

    def __len__(self) -> int:
        return len(self._decisions)

    def size(self) -> int:
        """Number of distinct decision sequences (product of ``num_choices``).

        This counts spellings, not cells: several sequences decode to one canonical
        genotype (commuted operands, renumbered or dead nodes), so the number of distinct
        cells is smaller.
        """
        return math.prod(d.num_choices for d in self._decisions)

    def decode(self, choices: Sequence[int]) -> Genotype:
        """Genotype for one integer per decision."""
        raise NotImplementedError

    def encode(self, genotype: Genotype) -> list[int]:
        """Inverse of ``decode``: ``decode(encode(g)) == g`` (see subclasses for padding)."""
        raise NotImplementedError

    def allowed(self, prefix: Sequence[int], require_memory: bool = True, require_bounded: bool = False,
                exclude_degenerate: bool = True) -> Optional[list[bool]]:
        """Constrained decoding: which choices of decision ``len(prefix)`` can still complete a cell that is
        not degenerate (``exclude_degenerate``) and, with ``require_bounded``, not unbounded; None when all
        can (the default: a space whose cells are never degenerate and never analysed for growth).

        A mask of a decision that is not an output must be exact and the same whatever came before
        (``sample`` relies on it to stay uniform over the valid cells)."""
        return None

    def sample(self, rng: Rng = None, accept: Optional[Callable[[Genotype], bool]] = None,
               max_tries: int = 10_000, constraint: Optional[Callable[[list[int]], Optional[list[bool]]]] = None
               ) -> Genotype:
        """A genotype drawn uniformly over each decision (``random.Random``, ``torch.Generator`` or seed).

        With ``accept``, draws are repeated until one is accepted: a uniform draw from the accepted
        subset (e.g. the cells that are not degenerate). ``constraint`` (a space's ``allowed`` with its
        settings) makes the search cheaper where acceptable cells are rare: each decision that is not an
        output is drawn uniformly among the choices it allows. Spaces restrict such decisions only by
        exact rules that never depend on earlier choices (enas: a bounded cell uses tanh or sigmoid
        everywhere), so with ``accept`` the draw is still uniform over the accepted subset; the output
        decisions (whose masks depend on the nodes) are left to ``accept``.
        """
        gen = as_rng(rng)
        for _ in range(max_tries):
            choices: list[int] = []
            for d in self._decisions:
                mask = constraint(choices) if constraint is not None and d.kind != "output" else None
                if mask is None:
                    choices.append(_randbelow(gen, d.num_choices))
                else:
                    ok = [k for k, m in enumerate(mask) if m]
                    choices.append(ok[_randbelow(gen, len(ok))])
            g = self.decode(choices)
            if accept is None or accept(g):
                return g
        raise GenotypeError(f"no acceptable {self.name} cell in {max_tries} draws of {self!r}")

    def _check_choices(self, choices: Sequence[int]) -> list[int]:
        values = [int(c) for c in choices]
        if len(values) != len(self._decisions):
            raise ValueError(
                f"{self.name} space with {self.num_nodes} nodes takes {len(self._decisions)} choices, "
                f"got {len(values)}"
            )
        for d, c in zip(self._decisions, values):
            if not 0 <= c < d.num_choices:
                raise ValueError(f"decision {d.name}: choice {c} is out of range [0, {d.num_choices})")
        return values

    def _check_genotype(self, genotype: Genotype) -> None:
        if genotype.space != self.name:
            raise GenotypeError(f"cannot encode a {genotype.space!r} genotype in the {self.name!r} space")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_nodes={self.num_nodes}, template={self.template!r})"

    def __eq__(self, other: object) -> bool:
        return (type(other) is type(self) and other.num_nodes == self.num_nodes  # type: ignore[attr-defined]
                and other.template == self.template)  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.name, self.num_nodes, self.template))
