"""Search spaces: the decisions a controller makes and how they decode into a genotype.

A space is a flat list of categorical ``Decision``s. A controller (or random search)
produces one integer per decision; ``decode`` turns them into a ``Genotype`` and
``encode`` is its inverse. The controller only sees ``decisions()`` - ``num_choices``
per step and a ``kind`` so it can give sources, activations, ops and outputs their own
embeddings - so adding a space needs no controller change (ARCHITECTURE.md).

Decision sequences (N = num_nodes)::

    lstm  (Abed & Gyires-Tóth 2021)         enas  (Pham et al. 2018, Sec. 2.1)
    for node i = 1..N:                      node 1:      act
      source a  [xh, c, n1..n_{i-1}]        node l > 1:  source [n1..n_{l-1}], act
      act a     [identity tanh sigmoid relu]
      source b, act b
      op        [add, mul]
    output h    [n1..nN]
    output c    [n1..nN]
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Union

import torch

from enas_rnn.genotype import (
    ACTIVATIONS,
    OPS,
    SPACE_INPUTS,
    ENASNode,
    Genotype,
    GenotypeError,
    LSTMNode,
    Operand,
    node_ref,
)

__all__ = [
    "DECISION_KINDS",
    "Decision",
    "SearchSpace",
    "LSTMSpace",
    "ENASSpace",
    "SPACES",
    "SpaceConfig",
    "make_space",
    "space_from_config",
]

#: Kinds of decision; a controller may keep one embedding table per kind.
DECISION_KINDS: tuple[str, ...] = ("source", "act", "op", "output")

Rng = Union[random.Random, torch.Generator, int, None]


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


def _randbelow(rng: random.Random | torch.Generator, n: int) -> int:
    """Uniform integer in [0, n) from either kind of generator."""
    if isinstance(rng, torch.Generator):
        return int(torch.randint(n, (1,), generator=rng).item())
    return rng.randrange(n)


def _as_rng(rng: Rng) -> random.Random | torch.Generator:
    if rng is None:
        return random.Random()
    if isinstance(rng, int):
        return random.Random(rng)
    return rng


class SearchSpace:
    """Base class: a named, fixed-length list of decisions with decode/encode/sample."""

    name: ClassVar[str] = ""

    def __init__(self, num_nodes: int = 8) -> None:
        if int(num_nodes) < 1:
            raise ValueError(f"{self.name} space: num_nodes must be >= 1, got {num_nodes}")
        self.num_nodes = int(num_nodes)
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

    def sample(self, rng: Rng = None) -> Genotype:
        """A genotype drawn uniformly over each decision (``random.Random``, ``torch.Generator`` or seed)."""
        gen = _as_rng(rng)
        return self.decode([_randbelow(gen, d.num_choices) for d in self._decisions])

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
        return f"{type(self).__name__}(num_nodes={self.num_nodes})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.num_nodes == self.num_nodes  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.name, self.num_nodes))


class LSTMSpace(SearchSpace):
    """The ``lstm`` space: per node two (source, act) operands and an op; then h and c nodes.

    Vanilla LSTM needs 4 nodes; with more, the extra nodes are dead (``encode`` pads).
    """

    name: ClassVar[str] = "lstm"

    def _sources(self, i: int) -> tuple[str, ...]:
        return SPACE_INPUTS["lstm"] + tuple(node_ref(j) for j in range(1, i))

    def _build_decisions(self) -> list[Decision]:
        out: list[Decision] = []
        for i in range(1, self.num_nodes + 1):
            srcs = self._sources(i)
            for slot in ("a", "b"):
                out.append(Decision(f"n{i}.src_{slot}", len(srcs), "source", srcs))
                out.append(Decision(f"n{i}.act_{slot}", len(ACTIVATIONS), "act", ACTIVATIONS))
            out.append(Decision(f"n{i}.op", len(OPS), "op", OPS))
        nodes = tuple(node_ref(j) for j in range(1, self.num_nodes + 1))
        out.append(Decision("out.h", self.num_nodes, "output", nodes))
        out.append(Decision("out.c", self.num_nodes, "output", nodes))
        return out

    def decode(self, choices: Sequence[int]) -> Genotype:
        it = iter(self._check_choices(choices))
        nodes = []
        for i in range(1, self.num_nodes + 1):
            srcs = self._sources(i)
            operands = []
            for _ in range(2):
                src = srcs[next(it)]
                operands.append(Operand(src, ACTIVATIONS[next(it)]))
            nodes.append(LSTMNode(OPS[next(it)], (operands[0], operands[1])))
        h, c = node_ref(next(it) + 1), node_ref(next(it) + 1)
        return Genotype("lstm", tuple(nodes), {"h": h, "c": c})

    def pad(self, genotype: Genotype) -> Genotype:
        """Append dead nodes so ``genotype`` has exactly ``num_nodes`` nodes (same cell)."""
        self._check_genotype(genotype)
        extra = self.num_nodes - genotype.num_nodes
        if extra < 0:
            raise GenotypeError(
                f"genotype has {genotype.num_nodes} nodes; the lstm space has only {self.num_nodes}"
            )
        # A dead filler node: nothing reads it and it is not an output, so it costs nothing.
        filler = LSTMNode("add", (Operand("xh", "identity"), Operand("xh", "identity")))
        return Genotype("lstm", genotype.nodes + (filler,) * extra, genotype.outputs)

    def encode(self, genotype: Genotype) -> list[int]:
        """Choices for ``genotype``; fewer nodes than the space are padded with dead nodes,
        so then ``decode(encode(g)) == self.pad(g)`` (same canonical cell)."""
        g = self.pad(genotype)
        out: list[int] = []
        for i, node in enumerate(g.nodes, start=1):
            assert isinstance(node, LSTMNode)
            srcs = self._sources(i)
            for operand in node.inputs:
                out += [srcs.index(operand.source), ACTIVATIONS.index(operand.act)]
            out.append(OPS.index(node.op))
        out += [int(g.outputs["h"][1:]) - 1, int(g.outputs["c"][1:]) - 1]
        return out


class ENASSpace(SearchSpace):
    """The ``enas`` space: node 1's activation, then (earlier node, act) for nodes 2..N.

    Pham et al. (2018) use N = 12 for Penn Treebank; ``enas_paper`` needs ``num_nodes=12``.
    """

    name: ClassVar[str] = "enas"

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
                f"use make_space('enas', {genotype.num_nodes})"
            )
        out = [ACTIVATIONS.index(genotype.nodes[0].act)]  # type: ignore[union-attr]
        for node in genotype.nodes[1:]:
            assert isinstance(node, ENASNode)
            out += [int(node.input[1:]) - 1, ACTIVATIONS.index(node.act)]
        return out


#: Registry of spaces by name.
SPACES: dict[str, type[SearchSpace]] = {"lstm": LSTMSpace, "enas": ENASSpace}


@dataclass
class SpaceConfig:
    """Hydra structured config of a search space (plain types only)."""

    name: str = "lstm"
    num_nodes: int = 8


def make_space(name: str, num_nodes: int = 8) -> SearchSpace:
    """Space by name; an unknown name lists the valid ones."""
    try:
        cls = SPACES[name]
    except KeyError:
        raise ValueError(f"unknown search space {name!r}; valid spaces: {', '.join(sorted(SPACES))}") from None
    return cls(num_nodes)


def space_from_config(cfg: SpaceConfig) -> SearchSpace:
    """Build the space a ``SpaceConfig`` (or a Hydra DictConfig with the same fields) names."""
    return make_space(str(cfg.name), int(cfg.num_nodes))
