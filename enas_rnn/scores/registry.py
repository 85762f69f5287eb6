"""The registry of training-free cell scores: one construction, one call, looked up by name.

Every score is a class ``Score(spec, cfg, cache=None, pool=0)`` whose instances are called as
``score(genotypes, data) -> list of results``, each result with a float ``.score`` (higher is
better; NaN when undefined) and ``.to_dict()``. ``spec`` (:class:`enas_rnn.scores.lm.LMSpec`)
describes the language model the cell would be trained in; ``data`` is a [T, B] token slice. The
search's screener and the study look scores up here by name (after NASLib's ``@measure``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from enas_rnn.errors import ConfigError

__all__ = ["SCORES", "register_score", "make_score"]

#: Name -> score class.
SCORES: dict[str, type] = {}


def register_score(name: str) -> Callable[[type], type]:
    """Class decorator adding a score to :data:`SCORES` under ``name``."""

    def deco(cls: type) -> type:
        if name in SCORES:
            raise ValueError(f"score {name!r} is already registered")
        SCORES[name] = cls
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return deco


def make_score(name: str, spec: Any, cfg: Any, cache: Any = None, pool: int = 0) -> Any:
    """An instance of the registered score ``name``; an unknown name lists the valid ones."""
    try:
        cls = SCORES[name]
    except KeyError:
        raise ConfigError(f"unknown score {name!r}; valid scores: {', '.join(sorted(SCORES))}") from None
    return cls(spec, cfg, cache, pool)
