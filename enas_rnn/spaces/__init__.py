"""Search spaces: the registry, their config and the factory.

Each space is one module (``lstm.py``, ``enas.py``) that owns everything its cells mean (see
``base.py``) and registers itself with the genotype registry when imported; ``enas_rnn`` imports
this package, so the built-in spaces are always known. A third space is one new module plus its
import and entry below.
"""

from __future__ import annotations

from dataclasses import dataclass

from enas_rnn.errors import ConfigError
from enas_rnn.rules import int_in, one_of, rule
from enas_rnn.spaces.base import DECISION_KINDS, Decision, SearchSpace
from enas_rnn.spaces.enas import ENASNode, ENASSpace
from enas_rnn.spaces.lstm import LSTMNode, LSTMSpace, Operand

__all__ = [
    "DECISION_KINDS",
    "Decision",
    "SearchSpace",
    "LSTMSpace",
    "ENASSpace",
    "LSTMNode",
    "ENASNode",
    "Operand",
    "SPACES",
    "SpaceConfig",
    "TEMPLATES",
    "make_space",
    "space_from_config",
]

#: Registry of spaces by name.
SPACES: dict[str, type[SearchSpace]] = {"lstm": LSTMSpace, "enas": ENASSpace}
#: Every space's templates (which one a space accepts is checked by ``make_space``).
TEMPLATES: tuple[str, ...] = tuple(dict.fromkeys(t for cls in SPACES.values() for t in cls.templates))


@dataclass
class SpaceConfig:
    """Hydra structured config of a search space (plain types only)."""

    name: str = rule("lstm", one_of(SPACES))
    num_nodes: int = rule(8, int_in(1, 64))
    # none: the free space; memory (lstm space): c_t = n1 + c_(t-1) * G is fixed, the rest is searched.
    template: str = rule("none", one_of(TEMPLATES))


def make_space(name: str, num_nodes: int = 8, template: str = "none") -> SearchSpace:
    """Space by name; an unknown name, a bad size or a template the space lacks fails with the valid values."""
    try:
        cls = SPACES[name]
    except KeyError:
        raise ConfigError(f"invalid config value space.name={name!r}: valid values are "
                          f"{', '.join(sorted(SPACES))}") from None
    if int(num_nodes) < 1:
        raise ConfigError(f"invalid config value space.num_nodes={num_nodes!r}: valid values are integers >= 1")
    if template not in cls.templates:
        raise ConfigError(f"invalid config value space.template={template!r}: valid values for the {name} space "
                          f"are {', '.join(cls.templates)}")
    try:
        return cls(num_nodes, template)
    except ValueError as e:  # e.g. a template that needs more nodes
        raise ConfigError(f"invalid config value space.num_nodes={num_nodes!r}: {e}") from None


def space_from_config(cfg: SpaceConfig) -> SearchSpace:
    """Build the space a ``SpaceConfig`` (or a Hydra DictConfig with the same fields) names."""
    # getattr: a config saved before space.template existed means the free space.
    return make_space(str(cfg.name), int(cfg.num_nodes), str(getattr(cfg, "template", "none")))
