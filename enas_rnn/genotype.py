"""Genotypes: frozen, validated descriptions of one recurrent cell.

A genotype is the only contract between search, retraining, comparison and export
(ARCHITECTURE.md, "One picture"). It is a plain value: it validates itself on
construction, converts to and from JSON, and has a canonical form and a stable hash
so that two spellings of one cell can be recognised as the same cell
(after AutoDL-Projects' ``Structure``; named cells are data, never ``eval``-ed,
unlike DARTS' ``eval("genotypes.%s")``).

What the nodes mean belongs to the genotype's search space (``enas_rnn.spaces``): each space
registers itself here (:func:`register_space`) and the genotype asks it to parse, validate,
canonicalise and analyse. JSON::

    {"space": "lstm",
     "nodes": [{"op": "mul", "inputs": [["xh", "sigmoid"], ["xh", "tanh"]]}, ...],
     "outputs": {"h": "n4", "c": "n3"}}
    {"space": "enas", "nodes": [{"input": "xh", "act": "tanh"}, {"input": "n1", "act": "relu"}, ...]}

Sources are strings: the space's inputs, or earlier nodes ``n1``, ``n2``, ... (1-based).
Optional ``name`` and ``source`` (a citation) keys ride along but are ignored by
equality, ``canonical()`` and ``hash()``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from enas_rnn.errors import UserError

__all__ = [
    "GenotypeError",
    "CellAnalysis",
    "Outputs",
    "Genotype",
    "NAMED",
    "register_space",
    "space_type",
    "get_named",
    "load_genotype",
    "node_ref",
    "parse_node_ref",
]

_NODE_REF = re.compile(r"^n([1-9][0-9]*)$")
_BOM = "\ufeff"  # the UTF-8 byte-order mark as a character


class GenotypeError(UserError, ValueError):
    """An invalid genotype; the message names the node, the bad value and the valid options."""


def node_ref(index: int) -> str:
    """Source string of node ``index`` (1-based): ``3 -> "n3"``."""
    return f"n{index}"


def parse_node_ref(source: str) -> int | None:
    """1-based node index of a source string, or None for an input (``"xh"``, ``"c"``)."""
    m = _NODE_REF.match(source)
    return int(m.group(1)) if m else None


def _options(values: Sequence[str]) -> str:
    return ", ".join(values) if values else "(none)"


# ----------------------------------------------------------------------------- space registry
#: Registered search-space classes by name (filled by ``enas_rnn.spaces``, imported by ``enas_rnn``).
_SPACES: dict[str, Any] = {}
#: Named published cells of every registered space (``name -> Genotype``).
NAMED: dict[str, "Genotype"] = {}


def register_space(cls: Any) -> Any:
    """Makes a search-space class known to genotypes and registers its published cells."""
    _SPACES[cls.name] = cls
    for key, data in cls.named.items():
        NAMED[key] = Genotype.from_dict({**data, "name": key})
    return cls


def space_type(name: str) -> Any:
    """The registered search-space class of ``name``; an unknown name lists the valid ones."""
    try:
        return _SPACES[name]
    except KeyError:
        raise GenotypeError(f"unknown space {name!r}; valid spaces: {_options(sorted(_SPACES))}") from None


# ----------------------------------------------------------------------------- analysis
@dataclass(frozen=True)
class CellAnalysis:
    """What a cell can do, decided exactly from its genotype (the state starts at zero).

    ``depends_on_input``: h_t can depend on the input sequence. ``has_memory``: the cell state
    c_t can depend on the input and h_t reads it (None where the space has no cell state).
    ``output_reason`` / ``memory_reason`` say in words why a property fails ('' when it holds).

    Boundedness, worst case over the weights, without the stability guard (``state_clip=None``):
    ``growth`` is how fast the state can grow with t - ``bounded``, ``linear`` (by at most a bounded
    amount per step, like nn.LSTM's c_t) or ``unbounded`` (geometrically or faster, or not proven
    otherwise); ``growth_h`` / ``growth_c`` per state (``growth_c`` None without a cell state), and
    ``growth_reason`` in words ('' when bounded). None where a space does not analyse it.
    """

    depends_on_input: bool
    has_memory: Optional[bool]
    output_reason: str = ""
    memory_reason: str = ""
    growth: Optional[str] = None
    growth_h: Optional[str] = None
    growth_c: Optional[str] = None
    growth_reason: str = ""

    def degenerate(self, require_memory: bool = True) -> bool:
        """True for a cell not worth evaluating: a dead output, or (``require_memory``) no working memory."""
        return not self.depends_on_input or (require_memory and self.has_memory is False)

    def unbounded(self) -> bool:
        """True when the state can explode (grow faster than linearly) for some weights, unguarded."""
        return self.growth == "unbounded"

    def why(self, require_memory: bool = True, require_bounded: bool = False) -> str:
        """Why the cell is degenerate (or, with ``require_bounded``, unbounded), as one sentence ('' when it
        is neither)."""
        parts = [] if self.depends_on_input else [self.output_reason]
        if require_memory and self.has_memory is False:
            parts.append(self.memory_reason)
        if require_bounded and self.unbounded():
            parts.append(self.growth_reason)
        return "; ".join(parts)


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


# ----------------------------------------------------------------------------- genotype
@dataclass(frozen=True)
class Genotype:
    """A validated recurrent cell of one search space (immutable, hashable, JSON round trip).

    ``nodes`` is a tuple of the space's node values (dicts/lists are coerced); ``outputs`` names
    the output nodes where the space has explicit outputs (lstm: ``{"h": ref, "c": ref}``).
    ``==`` compares the spelling; compare ``canonical()`` (or ``hash()``) for "same cell".
    """

    space: str
    nodes: tuple[Any, ...]
    outputs: Outputs = field(default_factory=Outputs)
    name: str | None = field(default=None, compare=False)
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        kind = space_type(self.space)
        raw_nodes = self.nodes
        if isinstance(raw_nodes, (str, Mapping)) or not isinstance(raw_nodes, Sequence):
            raise GenotypeError(f"'nodes' must be a list of nodes, got {raw_nodes!r}")
        nodes = tuple(kind.parse_node(n, i + 1) for i, n in enumerate(raw_nodes))
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

    @property
    def kind(self) -> Any:
        """The search-space class that gives this genotype its meaning."""
        return space_type(self.space)

    # ------------------------------------------------------------------ validation and structure
    def validate(self) -> None:
        """Raise ``GenotypeError`` naming the node, the bad value and the valid options."""
        if not self.nodes:
            raise GenotypeError(f"{self.space} genotype has no nodes; at least one is needed")
        self.kind.validate(self)

    @property
    def num_nodes(self) -> int:
        """Number of nodes as spelled (dead ones included)."""
        return len(self.nodes)

    def node_sources(self, index: int) -> tuple[str, ...]:
        """Sources read by node ``index`` (1-based)."""
        return self.nodes[index - 1].sources

    def live_nodes(self) -> tuple[int, ...]:
        """1-based indices of nodes that contribute to the outputs, ascending."""
        return self.kind.live_nodes(self)

    def analysis(self) -> CellAnalysis:
        """Exact degeneracy analysis and the boundedness analysis of the cell (see :class:`CellAnalysis`)."""
        return self._analysis

    @functools.cached_property
    def _analysis(self) -> CellAnalysis:
        return self.kind.analyse(self)

    def depends_on_input(self) -> bool:
        """True when h_t can depend on the input (a degenerate cell's output ignores it)."""
        return self.analysis().depends_on_input

    def has_memory(self) -> Optional[bool]:
        """True when c_t can depend on the input and h_t reads it; None where the space has no c."""
        return self.analysis().has_memory

    def is_degenerate(self, require_memory: bool = True) -> bool:
        """A cell whose output ignores its input, or (``require_memory``) whose memory carries nothing."""
        return self.analysis().degenerate(require_memory)

    def is_unbounded(self) -> bool:
        """A cell whose state can explode for some weights without the guard (see :class:`CellAnalysis`)."""
        return self.analysis().unbounded()

    def formula(self) -> list[str]:
        """The cell as readable equations, one per line."""
        return self.kind.formula(self)

    # ------------------------------------------------------------------ canonical form
    def canonical(self) -> Genotype:
        """The cell's canonical spelling: two spellings of one cell give equal results.

        Renumbering is an architecture identity, not a weight identity: a shared cell maps
        weights by node number, so never re-use shared weights across ``canonical()``.
        """
        return self._canonical

    @functools.cached_property
    def _canonical(self) -> Genotype:
        return self.kind.canonical(self)

    def hash(self) -> str:
        """Stable 12-hex-digit id of the cell: sha1 of the canonical JSON (sorted keys)."""
        return self._hash

    @functools.cached_property
    def _hash(self) -> str:
        text = json.dumps(self.canonical().core_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]

    def same_cell(self, other: Genotype) -> bool:
        """True when both spell one cell (equal canonical forms)."""
        return self.canonical() == other.canonical()

    # ------------------------------------------------------------------ (de)serialisation
    def core_dict(self) -> dict[str, Any]:
        """The JSON form without ``name``/``source`` (what identity and the hash are made of)."""
        d: dict[str, Any] = {"space": self.space, "nodes": [n.to_dict() for n in self.nodes]}
        names = self.kind.output_names
        if names:
            d["outputs"] = {k: self.outputs[k] for k in names}
        return d

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``name``/``source`` included when set)."""
        d = self.core_dict()
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
        space = str(data["space"])
        names = space_type(space).output_names
        if names and "outputs" not in data:
            raise GenotypeError(f"missing key 'outputs'; an {space} genotype needs {{{', '.join(repr(n) + ': ...' for n in names)}}}")
        return cls(
            space=space,
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

        A leading UTF-8 byte-order mark is ignored. Unreadable files and malformed JSON raise
        ``GenotypeError`` naming the file.
        """
        if isinstance(src, str) and src.removeprefix(_BOM).lstrip().startswith("{"):
            origin, text = "<json text>", src.removeprefix(_BOM)
        else:
            origin = str(src)
            try:
                # utf-8-sig: a leading byte-order mark (Windows editors write one) is not JSON; json.loads
                # would refuse it as "Unexpected UTF-8 BOM".
                text = Path(src).read_text(encoding="utf-8-sig")
            except OSError as e:
                raise GenotypeError(f"{origin}: cannot read genotype file ({e.strerror or e})") from e
            except UnicodeDecodeError as e:
                raise GenotypeError(f"{origin}: not a text file ({e.reason}); a genotype file is JSON") from e
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
        return f"Genotype({label}{json.dumps(self.core_dict())})"

    def __getstate__(self) -> dict[str, Any]:
        # Cached analysis/canonical form/hash are recomputed after unpickling (keeps pickles small).
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


# ----------------------------------------------------------------------------- named cells
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
    if not path.is_file():
        what = "a folder, not a JSON file" if path.is_dir() else "neither a named genotype " \
            f"({_options(sorted(NAMED))}) nor an existing JSON file"
        raise GenotypeError(f"{str(name_or_path)!r} is {what}")
    return Genotype.from_json(path)
