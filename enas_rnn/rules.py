"""Value rules of config fields, declared beside the field they check.

A config dataclass writes its range next to its default::

    @dataclass
    class TrainConfig:
        lr: float = rule(20.0, POSITIVE)        # SGD learning rate
        max_steps: Optional[int] = rule(None, OPT_INT1)

and :func:`check_values` walks an app's schema (nested dataclasses, dicts of them) and checks every
value of a composed config against its field's rule, naming the key as the user writes it in that
app (``retrain.max_steps``, not ``train.max_steps``). Rules that relate two fields live in the
dataclass's ``cross_check(cfg, key)`` static method, which the walk calls after the fields.
Types are OmegaConf's business (the schema rejects a string for an int); ranges and choices are ours.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from enas_rnn.errors import ConfigError

__all__ = [
    "Rule", "rule", "check_values", "fail", "one_of", "each", "int_in", "number_in", "OPT_NONNEG",
    "INT1", "INT0", "OPT_INT1", "POSITIVE", "NONNEG", "FINITE", "OPT_POSITIVE", "DROPOUT", "UNIT_OPEN",
]

Rule = tuple[Callable[[Any], bool], Any]  # (test, the valid values in words: a str, or a callable giving one)
KeyFn = Callable[[str], str]  # field name -> the key as the user writes it


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


INT1: Rule = (lambda v: _int(v) and v >= 1, "an integer >= 1")
INT0: Rule = (lambda v: _int(v) and v >= 0, "an integer >= 0")
OPT_INT1: Rule = (lambda v: v is None or (_int(v) and v >= 1), "an integer >= 1 or null")
POSITIVE: Rule = (lambda v: _num(v) and v > 0, "a finite number > 0")
NONNEG: Rule = (lambda v: _num(v) and v >= 0, "a finite number >= 0")
FINITE: Rule = (_num, "a finite number")
OPT_POSITIVE: Rule = (lambda v: v is None or (_num(v) and v > 0), "a finite number > 0 or null")
DROPOUT: Rule = (lambda v: _num(v) and 0.0 <= v < 1.0, "a number in [0, 1)")
UNIT_OPEN: Rule = (lambda v: _num(v) and 0.0 < v < 1.0, "a number in (0, 1)")
OPT_NONNEG: Rule = (lambda v: v is None or (_num(v) and v >= 0), "a finite number >= 0 or null")


def one_of(values: Iterable[Any] | Mapping[str, Any]) -> Rule:
    """A choice among ``values`` (listed in the message in the given order). A mapping (a registry) is read
    when the value is checked, so entries registered later count."""
    if isinstance(values, Mapping):
        registry = values
        return (lambda v: getattr(v, "value", v) in registry, lambda: "one of " + ", ".join(sorted(registry)))
    options = tuple(values)
    return (lambda v: getattr(v, "value", v) in options, "one of " + ", ".join(str(o) for o in options))


def each(check: Rule) -> Rule:
    """Every entry of a list obeys ``check``."""
    test, valid = check
    return (lambda v: isinstance(v, (list, tuple)) and all(test(x) for x in v),
            lambda: f"lists whose entries are {valid() if callable(valid) else valid}")


def int_in(lo: int, hi: int) -> Rule:
    return (lambda v: _int(v) and lo <= v <= hi, f"an integer in [{lo}, {hi}]")


def number_in(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Rule:
    def test(v: Any) -> bool:
        return _num(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    return (test, f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")


def rule(default: Any = dataclasses.MISSING, check: Rule | None = None, *,
         factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with a default (or ``factory``) and the value rule that :func:`check_values` applies."""
    meta = {"rule": check} if check is not None else {}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fail(key: str, value: Any, valid: Any) -> ConfigError:
    """The one form of a bad value's message: the key as the user writes it, the value, the valid values."""
    shown = value.value if hasattr(value, "value") else value
    words = valid() if callable(valid) else valid
    return ConfigError(f"invalid config value {key}={shown!r}: valid values are {words}")


def dataclass_of(tp: Any) -> type | None:
    """The dataclass a field holds (through Optional[...]), or None for plain values, lists and dicts."""
    if dataclasses.is_dataclass(tp):
        return tp  # type: ignore[return-value]
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg  # type: ignore[return-value]
    return None


def _dict_value_dataclass(tp: Any) -> type | None:
    """The dataclass of ``dict[str, SomeConfig]`` values, else None."""
    origin = typing.get_origin(tp)
    if origin in (dict, typing.Dict) or (origin is not None and getattr(origin, "__name__", "") in ("Mapping", "dict")):
        args = typing.get_args(tp)
        if len(args) == 2 and dataclasses.is_dataclass(args[1]):
            return args[1]  # type: ignore[return-value]
    return None


def _plain(v: Any) -> Any:
    if isinstance(v, (DictConfig, ListConfig)):
        return OmegaConf.to_container(v, resolve=True, enum_to_str=True)
    return v


def check_values(cfg: Any, schema: type, prefix: str = "") -> None:
    """Checks every value of ``cfg`` (a config node of ``schema``) against its field's rule, recursively.

    Fields whose value is an interpolation of another key (``emb_size: ${model.hidden_size}``) are checked
    after the others, so the message names the key the user set, not the one that copies it.
    """
    hints = typing.get_type_hints(schema)
    fields = [f for f in dataclasses.fields(schema) if f.name in cfg]

    def interpolated(name: str) -> bool:
        return isinstance(cfg, DictConfig) and OmegaConf.is_interpolation(cfg, name)

    fields.sort(key=lambda f: interpolated(f.name))
    for f in fields:
        key = f"{prefix}{f.name}"
        value = cfg[f.name]
        check = f.metadata.get("rule")
        if check is not None and not check[0](_plain(value)):
            raise fail(key, _plain(value), check[1])
        sub = dataclass_of(hints.get(f.name))
        if sub is not None and value is not None and isinstance(value, (DictConfig, dict)):
            check_values(value, sub, key + ".")
            continue
        entry = _dict_value_dataclass(hints.get(f.name))
        if entry is not None and value is not None:
            for name, node in value.items():
                check_values(node, entry, f"{key}.{name}.")
    cross = getattr(schema, "cross_check", None)
    if cross is not None:
        cross(cfg, lambda name: f"{prefix}{name}")
