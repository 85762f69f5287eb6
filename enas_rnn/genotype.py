"""Genotypes: frozen, validated descriptions of one recurrent cell.

A genotype is the only contract between search, retraining, comparison and export
(ARCHITECTURE.md, "One picture"). It is a plain value: it validates itself on
construction, converts to and from JSON, and has a canonical form and a stable hash
so that two spellings of one cell can be recognised as the same cell
(after AutoDL-Projects' ``Structure``; named cells are data, never ``eval``-ed,
unlike DARTS' ``eval("genotypes.%s")``).

Two spaces share this module (see ``enas_rnn.spaces`` for the decisions):

``lstm`` (after Abed & Gyires-Tóth, SAMI 2021)
    Inputs ``xh`` (the pair x_t, h_{t-1}) and ``c`` (c_{t-1}). Node i has an ``op``
    (add, mul) over two operands, each ``(source, activation)``; an operand reading
    ``xh`` applies its own affine map W[x_t; h_{t-1}] + b. ``outputs`` names the node
    that is h_t and the node that is c_t. JSON::

        {"space": "lstm",
         "nodes": [{"op": "mul", "inputs": [["xh", "sigmoid"], ["xh", "tanh"]]}, ...],
         "outputs": {"h": "n4", "c": "n3"}}

``enas`` (Pham et al. 2018, Sec. 2.1; google-research ``enas_lm``)
    Node 1 is a highway node over [x_t; h_{t-1}] and reads ``xh``; node l > 1 reads one
    earlier node. h_t is the mean of the loose ends (nodes no other node reads). JSON::

        {"space": "enas", "nodes": [{"input": "xh", "act": "tanh"},
                                    {"input": "n1", "act": "relu"}, ...]}

Sources are strings: the space's inputs, or earlier nodes ``n1``, ``n2``, ... (1-based).
Optional ``name`` and ``source`` (a citation) keys ride along but are ignored by
equality, ``canonical()`` and ``hash()``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Union

__all__ = [
    "ACTIVATIONS",
    "OPS",
    "SPACE_INPUTS",
    "GenotypeError",
    "Operand",
    "LSTMNode",
    "ENASNode",
    "Outputs",
    "Genotype",
    "NAMED",
    "get_named",
    "load_genotype",
]

#: Activations an operand (lstm) or a node (enas) may apply; the order is the index order
#: used by the search spaces.
ACTIVATIONS: tuple[str, ...] = ("identity", "tanh", "sigmoid", "relu")
#: Binary ops of an lstm-space node; both are commutative (canonical() relies on that).
OPS: tuple[str, ...] = ("add", "mul")
#: Inputs of each space, in the index order used by the search spaces.
SPACE_INPUTS: dict[str, tuple[str, ...]] = {"lstm": ("xh", "c"), "enas": ("xh",)}
#: Output names of the lstm space (enas: h_t is implicit, the mean of the loose ends).
LSTM_OUTPUTS: tuple[str, ...] = ("h", "c")

_NODE_REF = re.compile(r"^n([1-9][0-9]*)$")
# Above this many tie permutations canonical() stops brute-forcing automorphic nodes
# and keeps a deterministic (still valid, possibly non-unique) numbering.
_MAX_TIE_PERMUTATIONS = 5040


class GenotypeError(ValueError):
    """An invalid genotype; the message names the node, the bad value and the valid options."""


def node_ref(index: int) -> str:
    """Source string of node ``index`` (1-based): ``3 -> "n3"``."""
    return f"n{index}"


def parse_node_ref(source: str) -> int | None:
    """1-based node index of a source string, or None for an input (``"xh"``, ``"c"``)."""
    m = _NODE_REF.match(source)
    return int(m.group(1)) if m else None


class Operand(NamedTuple):
    """One operand of an lstm-space node: a source and the activation applied to it."""

    source: str
    act: str


@dataclass(frozen=True)
class LSTMNode:
    """lstm-space node: ``op(act_a(source_a), act_b(source_b))``."""

    op: str
    inputs: tuple[Operand, Operand]

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "inputs": [[o.source, o.act] for o in self.inputs]}


@dataclass(frozen=True)
class ENASNode:
    """enas-space node: reads one source and applies ``act`` inside its highway update."""

    input: str
    act: str

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "act": self.act}


Node = Union[LSTMNode, ENASNode]


class Outputs(Mapping[str, str]):
    """Read-only, hashable, picklable ``{"h": "n4", "c": "n3"}`` mapping."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | Sequence[tuple[str, str]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._items: tuple[tuple[str, str], ...] = tuple(sorted((str(k), str(v)) for k, v in pairs))

    def __getitem__(self, key: str) -> str:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._items) == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"Outputs({dict(self._items)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Outputs, (self._items,))


# ----------------------------------------------------------------------------- coercion
def _err(where: str, msg: str) -> GenotypeError:
    return GenotypeError(f"{where}: {msg}" if where else msg)


def _options(values: Sequence[str]) -> str:
    return ", ".join(values) if values else "(none)"


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


def _coerce_node(space: str, raw: Any, index: int) -> Node:
    where = f"node {node_ref(index)}"
    if space == "lstm":
        if isinstance(raw, LSTMNode):
            return raw
        if not isinstance(raw, Mapping):
            raise _err(where, f"expected an object {{'op', 'inputs'}}, got {raw!r}")
        missing = [k for k in ("op", "inputs") if k not in raw]
        if missing:
            raise _err(where, f"missing key(s) {missing}; an lstm node needs 'op' and 'inputs'")
        inputs = raw["inputs"]
        if isinstance(inputs, str) or not isinstance(inputs, Sequence) or len(inputs) != 2:
            raise _err(where, f"'inputs' must hold exactly 2 operands, got {inputs!r}")
        ops = tuple(_coerce_operand(o, f"{where} operand {k + 1}") for k, o in enumerate(inputs))
        return LSTMNode(str(raw["op"]), (ops[0], ops[1]))
    if isinstance(raw, ENASNode):
        return raw
    if not isinstance(raw, Mapping):
        raise _err(where, f"expected an object {{'input', 'act'}}, got {raw!r}")
    missing = [k for k in ("input", "act") if k not in raw]
    if missing:
        raise _err(where, f"missing key(s) {missing}; an enas node needs 'input' and 'act'")
    return ENASNode(str(raw["input"]), str(raw["act"]))


# ----------------------------------------------------------------------------- genotype
@dataclass(frozen=True)
class Genotype:
    """A validated recurrent cell of one search space (immutable, hashable, JSON round trip).

    ``nodes`` is a tuple of ``LSTMNode``/``ENASNode`` (dicts/lists are coerced);
    ``outputs`` is ``{"h": ref, "c": ref}`` for ``lstm`` and empty for ``enas``.
    ``==`` compares the spelling; compare ``canonical()`` (or ``hash()``) for "same cell".
    """

    space: str
    nodes: tuple[Node, ...]
    outputs: Outputs = field(default_factory=Outputs)
    name: str | None = field(default=None, compare=False)
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.space not in SPACE_INPUTS:
            raise GenotypeError(
                f"unknown space {self.space!r}; valid spaces: {_options(list(SPACE_INPUTS))}"
            )
        raw_nodes = self.nodes
        if isinstance(raw_nodes, (str, Mapping)) or not isinstance(raw_nodes, Sequence):
            raise GenotypeError(f"'nodes' must be a list of nodes, got {raw_nodes!r}")
        nodes = tuple(_coerce_node(self.space, n, i + 1) for i, n in enumerate(raw_nodes))
        outputs = self.outputs
        if outputs is None:
            outputs = Outputs()
        elif not isinstance(outputs, Outputs):
            if not isinstance(outputs, Mapping):
                raise GenotypeError(f"'outputs' must be an object like {{'h': 'n4', 'c': 'n3'}}, got {outputs!r}")
            outputs = Outputs(outputs)
        # Frozen dataclass: normalise fields through object.__setattr__ once, here.
        object.__setattr__(self, "nodes", nodes)
        object.__setattr__(self, "outputs", outputs)
        self.validate()

    def __hash__(self) -> int:
        return hash((self.space, self.nodes, self.outputs))

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ``GenotypeError`` naming the node, the bad value and the valid options."""
        if not self.nodes:
            raise GenotypeError(f"{self.space} genotype has no nodes; at least one is needed")
        inputs = SPACE_INPUTS[self.space]
        for i, node in enumerate(self.nodes, start=1):
            where = f"node {node_ref(i)}"
            valid = list(inputs) + [node_ref(j) for j in range(1, i)]
            if isinstance(node, LSTMNode):
                if self.space != "lstm":
                    raise _err(where, f"an lstm node in a {self.space} genotype")
                if node.op not in OPS:
                    raise _err(where, f"unknown op {node.op!r}; valid ops: {_options(OPS)}")
                for k, operand in enumerate(node.inputs, start=1):
                    if operand.source not in valid:
                        raise _err(
                            where,
                            f"operand {k} source {operand.source!r} is not an input or an earlier "
                            f"node; valid sources: {_options(valid)}",
                        )
                    if operand.act not in ACTIVATIONS:
                        raise _err(
                            where,
                            f"operand {k} activation {operand.act!r} is unknown; "
                            f"valid activations: {_options(ACTIVATIONS)}",
                        )
            else:
                if self.space != "enas":
                    raise _err(where, f"an enas node in a {self.space} genotype")
                # enas: n1 is the highway over [x_t; h_{t-1}]; later nodes read one earlier node.
                allowed = ["xh"] if i == 1 else [node_ref(j) for j in range(1, i)]
                if node.input not in allowed:
                    what = "n1 is the highway node and must read 'xh'" if i == 1 else (
                        "an enas node reads one earlier node")
                    raise _err(
                        where,
                        f"input {node.input!r} is not valid ({what}); valid inputs: {_options(allowed)}",
                    )
                if node.act not in ACTIVATIONS:
                    raise _err(
                        where,
                        f"activation {node.act!r} is unknown; valid activations: {_options(ACTIVATIONS)}",
                    )
        refs = [node_ref(j) for j in range(1, len(self.nodes) + 1)]
        if self.space == "lstm":
            keys = set(self.outputs)
            if keys != set(LSTM_OUTPUTS):
                raise GenotypeError(
                    f"outputs: keys {sorted(keys)} are not valid; an lstm genotype needs exactly "
                    f"{list(LSTM_OUTPUTS)}, e.g. {{'h': 'n4', 'c': 'n3'}}"
                )
            for key in LSTM_OUTPUTS:
                if self.outputs[key] not in refs:
                    raise GenotypeError(
                        f"outputs: {key} -> {self.outputs[key]!r} is not a node; valid: {_options(refs)}"
                    )
        elif len(self.outputs):
            raise GenotypeError(
                f"outputs: an enas genotype has no outputs (h_t is the mean of the loose ends), "
                f"got {dict(self.outputs)}"
            )

    # ------------------------------------------------------------------ structure
    @property
    def num_nodes(self) -> int:
        """Number of nodes as spelled (dead ones included)."""
        return len(self.nodes)

    def node_sources(self, index: int) -> tuple[str, ...]:
        """Sources read by node ``index`` (1-based)."""
        node = self.nodes[index - 1]
        if isinstance(node, LSTMNode):
            return tuple(o.source for o in node.inputs)
        return (node.input,)

    def live_nodes(self) -> tuple[int, ...]:
        """1-based indices of nodes that contribute to the outputs, ascending.

        lstm: nodes reachable backwards from the h and c outputs. enas: every node (each
        node reaches h_t, through the loose ends that descend from it).
        """
        if self.space == "enas":
            return tuple(range(1, self.num_nodes + 1))
        live: set[int] = set()
        stack = [parse_node_ref(self.outputs[k]) for k in LSTM_OUTPUTS]
        while stack:
            i = stack.pop()
            if i is None or i in live:
                continue
            live.add(i)
            stack.extend(parse_node_ref(s) for s in self.node_sources(i))
        return tuple(sorted(live))

    def depends_on_input(self) -> bool:
        """True when h_t can depend on x (a degenerate lstm-space cell may only read c).

        h depends on x iff the h node reads ``xh``, or it reads ``c`` and the c node reads
        ``xh`` (c_t = f(c_{t-1}) alone never involves x). enas cells always do.
        """
        if self.space == "enas":
            return True
        reads: dict[str, set[str]] = {"xh": {"xh"}, "c": {"c"}}
        for i in range(1, self.num_nodes + 1):
            reads[node_ref(i)] = set().union(*(reads[s] for s in self.node_sources(i)))
        h, c = reads[self.outputs["h"]], reads[self.outputs["c"]]
        return "xh" in h or ("c" in h and "xh" in c)

    def loose_ends(self) -> tuple[int, ...]:
        """enas: 1-based indices of nodes no other node reads (their mean is h_t)."""
        if self.space != "enas":
            raise GenotypeError(f"loose_ends() is defined for the enas space, not {self.space!r}")
        read = {parse_node_ref(n.input) for n in self.nodes}
        return tuple(i for i in range(1, self.num_nodes + 1) if i not in read)

    # ------------------------------------------------------------------ canonical form
    def canonical(self) -> Genotype:
        """The cell's canonical spelling: two spellings of one cell give equal results.

        lstm: dead nodes dropped, nodes renumbered in a canonical topological order and
        the two operands of each (commutative) op sorted. Nodes are ordered by
        (depth, structural signature); nodes tied on that key are structurally identical
        and independent, and the lexicographically smallest spelling over their
        permutations is kept (exact up to ``_MAX_TIE_PERMUTATIONS`` ties).
        enas: the cell is a tree rooted at n1 (each node reads one parent), so it is
        renumbered in pre-order with children sorted by their subtree's signature - exact.

        Renumbering is an architecture identity, not a weight identity: a shared cell maps
        weights by node number, so never re-use shared weights across ``canonical()``.
        """
        if self.space == "enas":
            return self._canonical_enas()
        return self._canonical_lstm()

    def _canonical_enas(self) -> Genotype:
        children: dict[int, list[int]] = {i: [] for i in range(1, self.num_nodes + 1)}
        for i in range(2, self.num_nodes + 1):
            parent = parse_node_ref(self.nodes[i - 1].input)  # type: ignore[union-attr]
            assert parent is not None
            children[parent].append(i)
        sig: dict[int, str] = {}
        for i in range(self.num_nodes, 0, -1):  # children have larger indices: bottom-up
            kids = sorted(sig[k] for k in children[i])
            sig[i] = _digest(f"{self.nodes[i - 1].act}({','.join(kids)})")  # type: ignore[union-attr]
        order: list[int] = []

        def visit(i: int) -> None:
            order.append(i)
            for k in sorted(children[i], key=lambda k: sig[k]):
                visit(k)

        visit(1)
        new_id = {old: pos + 1 for pos, old in enumerate(order)}
        nodes = []
        for old in order:
            node = self.nodes[old - 1]
            assert isinstance(node, ENASNode)
            src = node.input if old == 1 else node_ref(new_id[parse_node_ref(node.input)])  # type: ignore[index]
            nodes.append(ENASNode(src, node.act))
        return Genotype("enas", tuple(nodes))

    def _canonical_lstm(self) -> Genotype:
        live = self.live_nodes()
        depth: dict[str, int] = {s: 0 for s in SPACE_INPUTS["lstm"]}
        sig: dict[str, str] = {s: s for s in SPACE_INPUTS["lstm"]}
        for i in live:  # ascending index is a topological order
            node = self.nodes[i - 1]
            assert isinstance(node, LSTMNode)
            ref = node_ref(i)
            depth[ref] = 1 + max(depth[o.source] for o in node.inputs)
            # Bottom-up structural signature; operands sorted because add and mul commute.
            # Hashed so that signatures stay short however much the DAG shares sub-terms.
            ops = sorted(f"{o.act}:{sig[o.source]}" for o in node.inputs)
            sig[ref] = _digest(f"{node.op}({ops[0]},{ops[1]})")
        keyed = sorted(live, key=lambda i: (depth[node_ref(i)], sig[node_ref(i)]))
        groups = [list(g) for _, g in itertools.groupby(keyed, key=lambda i: (depth[node_ref(i)], sig[node_ref(i)]))]
        n_perm = math.prod(math.factorial(len(g)) for g in groups)
        if n_perm > _MAX_TIE_PERMUTATIONS:
            candidates: Iterator[tuple[tuple[int, ...], ...]] = iter([tuple(tuple(g) for g in groups)])
        else:
            candidates = itertools.product(*(itertools.permutations(g) for g in groups))
        best: tuple[str, Genotype] | None = None
        for combo in candidates:
            order = [i for g in combo for i in g]
            cand = self._renumber_lstm(order)
            text = json.dumps(cand._core_dict(), sort_keys=True)
            if best is None or text < best[0]:
                best = (text, cand)
        assert best is not None
        return best[1]

    def _renumber_lstm(self, order: Sequence[int]) -> Genotype:
        new_ref = {node_ref(old): node_ref(pos + 1) for pos, old in enumerate(order)}
        nodes = []
        for old in order:
            node = self.nodes[old - 1]
            assert isinstance(node, LSTMNode)
            ops = sorted(
                (Operand(new_ref.get(o.source, o.source), o.act) for o in node.inputs),
                key=_operand_key,
            )
            nodes.append(LSTMNode(node.op, (ops[0], ops[1])))
        outputs = {k: new_ref[self.outputs[k]] for k in LSTM_OUTPUTS}
        return Genotype("lstm", tuple(nodes), Outputs(outputs))

    def hash(self) -> str:
        """Stable 12-hex-digit id of the cell: sha1 of the canonical JSON (sorted keys)."""
        text = json.dumps(self.canonical()._core_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]

    def same_cell(self, other: Genotype) -> bool:
        """True when both spell one cell (equal canonical forms)."""
        return self.canonical() == other.canonical()

    # ------------------------------------------------------------------ (de)serialisation
    def _core_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"space": self.space, "nodes": [n.to_dict() for n in self.nodes]}
        if self.space == "lstm":
            d["outputs"] = {k: self.outputs[k] for k in LSTM_OUTPUTS}
        return d

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``name``/``source`` included when set)."""
        d = self._core_dict()
        if self.name is not None:
            d["name"] = self.name
        if self.source is not None:
            d["source"] = self.source
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Genotype:
        """Build from the JSON form; missing or unknown keys raise ``GenotypeError``."""
        if not isinstance(data, Mapping):
            raise GenotypeError(f"a genotype must be a JSON object, got {type(data).__name__}")
        missing = [k for k in ("space", "nodes") if k not in data]
        if missing:
            raise GenotypeError(f"missing key(s) {missing}; a genotype needs 'space' and 'nodes'")
        known = {"space", "nodes", "outputs", "name", "source"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GenotypeError(f"unknown key(s) {unknown}; valid keys: {_options(sorted(known))}")
        space = data["space"]
        if space == "lstm" and "outputs" not in data:
            raise GenotypeError("missing key 'outputs'; an lstm genotype needs {'h': ..., 'c': ...}")
        return cls(
            space=str(space),
            nodes=data["nodes"],
            outputs=data.get("outputs") or Outputs(),
            name=data.get("name"),
            source=data.get("source"),
        )

    def to_json(self, path: str | Path | None = None, indent: int | None = 2) -> str:
        """JSON text of ``to_dict()``; also written to ``path`` when given."""
        d = self.to_dict()
        if indent is None:
            text = json.dumps(d)
        else:
            # One node per line: the form a person writes by hand and reads in a diff.
            pad = " " * indent
            lines = [f"{pad}{json.dumps(k)}: {json.dumps(v)}" for k, v in d.items() if k != "nodes"]
            nodes = ",\n".join(f"{pad}{pad}{json.dumps(n)}" for n in d["nodes"])
            lines.insert(1, f"{pad}\"nodes\": [\n{nodes}\n{pad}]")
            text = "{\n" + ",\n".join(lines) + "\n}"
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, src: str | Path) -> Genotype:
        """Parse JSON text (a ``str`` starting with ``{``) or read a JSON file (any other path).

        Unreadable files and malformed JSON raise ``GenotypeError`` naming the file.
        """
        if isinstance(src, str) and src.lstrip().startswith("{"):
            origin, text = "<json text>", src
        else:
            origin = str(src)
            try:
                text = Path(src).read_text(encoding="utf-8")
            except OSError as e:
                raise GenotypeError(f"{origin}: cannot read genotype file ({e.strerror or e})") from e
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"{origin}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
        try:
            return cls.from_dict(data)
        except GenotypeError as e:
            raise GenotypeError(f"{origin}: {e}") from e

    def __str__(self) -> str:
        label = f"{self.name} " if self.name else ""
        return f"Genotype({label}{json.dumps(self._core_dict())})"


def _digest(text: str) -> str:
    """Short, isomorphism-invariant stand-in for a structural signature string."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


def _operand_key(o: Operand) -> tuple[int, int, int, str]:
    """Sort key for operands: inputs before nodes, nodes by number, then activation."""
    idx = parse_node_ref(o.source)
    src_rank = SPACE_INPUTS["lstm"].index(o.source) if idx is None else 0
    return (0 if idx is None else 1, src_rank if idx is None else idx, ACTIVATIONS.index(o.act), o.act)


# ----------------------------------------------------------------------------- named cells
# Published cells, stored as data (ARCHITECTURE.md, style rule 3).
_NAMED_DATA: dict[str, dict[str, Any]] = {
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

#: Named published cells (``name -> Genotype``).
NAMED: dict[str, Genotype] = {
    key: Genotype.from_dict({**data, "name": key}) for key, data in _NAMED_DATA.items()
}


def get_named(name: str) -> Genotype:
    """A named published cell; an unknown name lists the valid ones."""
    try:
        return NAMED[name]
    except KeyError:
        raise GenotypeError(f"unknown named genotype {name!r}; valid names: {_options(sorted(NAMED))}") from None


def load_genotype(name_or_path: str | Path | Genotype) -> Genotype:
    """A named cell (``"lstm"``, ``"enas_paper"``), or the genotype stored in a JSON file."""
    if isinstance(name_or_path, Genotype):
        return name_or_path
    if isinstance(name_or_path, str) and name_or_path in NAMED:
        return NAMED[name_or_path]
    path = Path(name_or_path)
    if not path.exists():
        raise GenotypeError(
            f"{str(name_or_path)!r} is neither a named genotype ({_options(sorted(NAMED))}) "
            f"nor an existing JSON file"
        )
    return Genotype.from_json(path)
