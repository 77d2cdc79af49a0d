"""Check a plugin's options (a config table) against the keyword parameters of its class.

A plugin declares its options simply as typed keyword arguments of ``__init__``; this module
turns unknown keys and wrong types into errors that name the key, the table and the file.
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError


def option_spec(cls: type) -> dict[str, tuple[Any, Any]]:
    """``{option: (type hint, default)}`` from ``cls.__init__``; default is ``inspect._empty`` if required."""
    init = cls.__init__
    if init is object.__init__:
        return {}
    try:
        hints = typing.get_type_hints(init)
    except Exception:
        hints = {}
    spec = {}
    for name, param in inspect.signature(init).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        spec[name] = (hints.get(name, Any), param.default)
    return spec


class Configurable:
    """Base of plugin classes: options are keyword arguments of ``__init__``, kept as attributes
    of the same name, and :meth:`options` reads them back (the ``params`` a store records)."""

    def options(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in option_spec(type(self)) if hasattr(self, name)}


def option_defaults(cls: type) -> dict[str, str]:
    """``{option: default}`` as TOML-like text (``"required"`` where there is none), for listings;
    empty when the signature cannot be read."""
    try:
        spec = option_spec(cls)
    except (TypeError, ValueError):
        return {}
    return {name: "required" if default is inspect.Parameter.empty else _toml(default)
            for name, (_, default) in spec.items()}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (str, Path)):
        return f'"{value}"'
    return "none" if value is None else repr(value)


def accepts_any_option(cls: type) -> bool:
    init = cls.__init__
    return init is not object.__init__ and any(
        p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values())


def check_options(cls: type, options: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate ``options`` for ``cls``; ``where`` reads like ``"[dataset] in run.toml"``."""
    spec = option_spec(cls)
    if not accepts_any_option(cls):
        unknown = sorted(set(options) - set(spec))
        if unknown:
            known = ", ".join(sorted(spec)) or "none"
            raise ConfigError(f"unknown key {unknown[0]!r} in {where}; this plugin takes: {known}")
    for key, value in options.items():
        if key in spec and not matches(value, spec[key][0]):
            raise ConfigError(
                f"wrong type for {key!r} in {where}: got {_show(value)}, expected {describe(spec[key][0])}")
    missing = [k for k, (_, default) in spec.items()
               if default is inspect.Parameter.empty and k not in options]
    if missing:
        raise ConfigError(f"missing key {missing[0]!r} in {where}")
    return options


def matches(value: Any, hint: Any) -> bool:
    """Whether a TOML value fits a type hint (int is accepted for float; str for Path)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (list, tuple, typing.Sequence):
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and (
            not args or all(matches(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is Path:
        return isinstance(value, (str, Path))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(h) for h in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return f"a list of {describe(args[0])}" if args else "a list"
    if hint is type(None):
        return "nothing"
    if hint is Path:
        return "a path (string)"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            dict: "a table"}.get(hint, getattr(hint, "__name__", str(hint)))


def _show(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "table"}.get(type(value), type(value).__name__)
    return f"{kind} {value!r}"


def at_least(name: str, value: float, minimum: float) -> Any:
    """``value``, the option ``name`` of a plugin's ``__init__``, refused (ValueError, reported
    against the config table) when it is below ``minimum`` or NaN."""
    if not value >= minimum:
        raise ValueError(f"'{name}' must be at least {minimum}, got {value}")
    return value
