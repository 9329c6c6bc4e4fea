"""Component configs: dataclasses whose fields are recipe options, validated strictly.

One source of truth: a field's default is the component's default, ``metadata["help"]`` its
documentation, ``metadata["min"]``/``["max"]`` its range. Floats accept exact fractions
written as strings (``eps = "8/255"``).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from fractions import Fraction
from typing import Any, Literal, get_args, get_origin, get_type_hints

MISSING = dataclasses.MISSING


def option(default=MISSING, *, help: str = "", min=None, max=None, default_factory=MISSING, path: bool = False,
           key: bool | str = True):
    """A config field with documentation, an optional range (inclusive), ``path=True`` for file or
    folder names (resolved relative to the recipe's folder), and ``key=False`` for options that do
    not change a trained source's weights (where data lives, downloads, checkpoint frequency), so
    that they stay out of its store key (rtk.config.source_key); ``key="if-set"`` for an option added
    after sources were stored: it enters the key only when it differs from its default, so the keys
    of the sources already in stores stay valid."""
    meta = {"help": help, "path": path, "key": key}
    if min is not None:
        meta["min"] = min
    if max is not None:
        meta["max"] = max
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class ConfigValueError(ValueError):
    """A single config problem; ``key`` is the offending key (None for the whole table)."""

    def __init__(self, key: str | None, message: str):
        super().__init__(message)
        self.key = key


def parse_number(value: Any) -> float:
    """Parse a float option: numbers, or strings like "8/255", "0.5", "1e-3" (exact fractions)."""
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, (int, float)):
        try:
            result = float(value)
        except OverflowError:  # TOML integers are unbounded; floats stop near 1.8e308
            raise ValueError("expected a finite number, got an integer too large for a float") from None
    elif isinstance(value, str):
        try:
            result = float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f'expected a number or a fraction like "8/255", got "{value}"') from None
        except OverflowError:
            raise ValueError(f'expected a finite number, got "{value}" (too large for a float)') from None
    else:
        raise ValueError(f"expected a number, got {type(value).__name__}")
    if not math.isfinite(result):
        raise ValueError(f"expected a finite number, got {value!r}")
    return result


def type_name(tp) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) if not isinstance(a, str) else f'"{a}"' for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if origin is list:
        (inner,) = get_args(tp) or (Any,)
        return f"list[{type_name(inner)}]"
    if origin is dict:
        return "table"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp) -> Any:
    """Check ``value`` (parsed TOML) against annotation ``tp``; return the converted value."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp) and type(value) in {type(a) for a in get_args(tp)}:
            return value
        raise ValueError(f"expected one of {type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() == "none")):
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[T]: T's own message is the most specific
            return coerce(value, options[0])
        for arg in options:
            try:
                return coerce(value, arg)
            except ValueError:
                pass
        raise ValueError(f"expected {type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"expected a list ({type_name(tp)}), got {type(value).__name__}")
        (inner,) = get_args(tp) or (Any,)
        return [coerce(v, inner) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected a table, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if tp is float:
        return parse_number(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    raise TypeError(f"rtk configs do not support the annotation {tp!r}")


def fields_of(cls) -> list[tuple[dataclasses.Field, Any]]:
    hints = get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _check_range(name: str, value, meta) -> None:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if "min" in meta and v < meta["min"]:
            raise ConfigValueError(name, f"must be at least {meta['min']}, got {v}")
        if "max" in meta and v > meta["max"]:
            raise ConfigValueError(name, f"must be at most {meta['max']}, got {v}")


def build_config(cls, table: dict, also_valid: tuple[str, ...] = ()):
    """Build ``cls`` from a TOML table; raise ConfigValueError naming the key on any problem.

    ``also_valid`` are keys the caller handles itself (listed among the valid keys in errors).
    """
    known = fields_of(cls)
    names = [f.name for f, _ in known]
    for key in table:
        if key not in names:
            valid = ", ".join([*also_valid, *names]) or "(none)"
            raise ConfigValueError(key, f'unknown key "{key}"; valid keys: {valid}')
    kwargs = {}
    for f, tp in known:
        if f.name not in table:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigValueError(f.name, f'missing required key "{f.name}" ({type_name(tp)})')
            continue
        try:
            kwargs[f.name] = coerce(table[f.name], tp)
        except ValueError as exc:
            raise ConfigValueError(f.name, str(exc)) from None
        _check_range(f.name, kwargs[f.name], f.metadata)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigValueError(None, str(exc)) from None


def describe(cls) -> list[dict]:
    """The options of a config class: name, type, default, range, help."""
    rows = []
    for f, tp in fields_of(cls):
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        rows.append(
            {
                "name": f.name,
                "type": type_name(tp),
                "default": default,
                "min": f.metadata.get("min"),
                "max": f.metadata.get("max"),
                "help": f.metadata.get("help", ""),
            }
        )
    return rows


def to_table(config) -> dict:
    """The config as a plain TOML-ready dict (None values dropped: TOML has no null)."""
    return {k: v for k, v in dataclasses.asdict(config).items() if v is not None}
