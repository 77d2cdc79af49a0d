"""The plugin registry: discovers plugin modules through the ``xaicxr`` entry-point group.

Built-in plugins (the ``xaicxr_builtins`` package) are registered exactly like third-party
ones. A module that fails to import, or whose hook raises or returns something malformed, is
recorded with its distribution and the error, and every other plugin keeps working.

Two plugins registering the same name under one kind is a conflict: listing still works,
and ``get`` of that name raises an error naming both distributions. There is no silent
precedence, so an installed package can never shadow a built-in unnoticed.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .options import option_defaults
from ..errors import PluginConflictError, UnknownPluginError

GROUP = "xaicxr"


@dataclass(frozen=True)
class PluginInfo:
    kind: str
    name: str
    cls: type
    module: str
    distribution: str
    version: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "module": self.module,
                "distribution": self.distribution, "version": self.version,
                "options": option_defaults(self.cls)}


@dataclass(frozen=True)
class PluginFailure:
    module: str
    distribution: str
    error: str

    def to_json(self) -> dict[str, str]:
        return {"module": self.module, "distribution": self.distribution, "error": self.error}


@dataclass(frozen=True)
class _Source:
    module: str
    distribution: str
    version: str


class Registry:
    """Every plugin found, by kind and name, plus the failures met while loading them."""

    def __init__(self, eps: Iterable[EntryPoint] | None = None) -> None:
        self.manager = pluggy.PluginManager(GROUP)
        self.manager.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self._sources: dict[str, _Source] = {}
        self._by_kind: dict[str, dict[str, list[PluginInfo]]] = {k: {} for k in hookspecs.KINDS}
        for ep in entry_points(group=GROUP) if eps is None else eps:
            self._load_entry_point(ep)
        self._collect()

    def register(self, plugin: Any, *, distribution: str = "(registered at runtime)",
                 version: str = "") -> None:
        """Register a module or object implementing hooks, e.g. from a notebook or a test."""
        module = getattr(plugin, "__name__", type(plugin).__qualname__)
        self._register(plugin, _Source(module, distribution, version))
        self._collect()

    def _load_entry_point(self, ep: EntryPoint) -> None:
        dist = ep.dist.name if ep.dist is not None else "(unknown distribution)"
        version = ep.dist.version if ep.dist is not None else ""
        try:
            plugin = ep.load()
        except BaseException as exc:  # a broken plugin must never take the tool down
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.failures.append(PluginFailure(ep.value, dist, _describe(exc)))
            return
        self._register(plugin, _Source(ep.value, dist, version))

    def _register(self, plugin: Any, source: _Source) -> None:
        try:
            name = self.manager.register(plugin, name=f"{source.distribution}:{source.module}")
        except Exception as exc:  # pluggy validates hook signatures at registration
            self.failures.append(PluginFailure(source.module, source.distribution, _describe(exc)))
            return
        if name is None:
            return
        try:
            self.manager.check_pending()
        except pluggy.PluginValidationError as exc:
            self.manager.unregister(name=name)
            self.failures.append(PluginFailure(source.module, source.distribution, _unknown_hook(exc)))
            return
        self._sources[name] = source

    def _collect(self) -> None:
        """Call every hook implementation separately, so a failure is pinned on its plugin."""
        self._by_kind = {k: {} for k in hookspecs.KINDS}
        seen = {(f.module, f.error) for f in self.failures}
        for kind, hook_name in hookspecs.KINDS.items():
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                source = self._sources[impl.plugin_name]
                try:
                    found = impl.function()
                    _check_hook_result(hook_name, found)
                except Exception as exc:
                    failure = PluginFailure(source.module, source.distribution,
                                            f"{hook_name}(): {_describe(exc)}")
                    if (failure.module, failure.error) not in seen:
                        self.failures.append(failure)
                        seen.add((failure.module, failure.error))
                    continue
                for name, cls in found.items():
                    wrong = _wrong_base(kind, name, cls)
                    if wrong:
                        self.failures.append(PluginFailure(source.module, source.distribution,
                                                           f"{hook_name}(): {wrong}"))
                        continue
                    info = PluginInfo(kind, name, cls, source.module, source.distribution,
                                      source.version)
                    self._by_kind[kind].setdefault(name, []).append(info)

    def names(self, kind: str) -> list[str]:
        _check_kind(kind)
        return sorted(self._by_kind[kind])

    def info(self, kind: str, name: str) -> PluginInfo:
        _check_kind(kind)
        candidates = self._by_kind[kind].get(name)
        if not candidates:
            raise UnknownPluginError(_unknown_message(kind, name, self.names(kind)))
        if len(candidates) > 1:
            who = " and ".join(f"{c.distribution} ({c.module})" for c in candidates)
            raise PluginConflictError(
                f"{kind} {name!r} is registered by {who}; uninstall one of them "
                "(xaicxr does not pick one silently)")
        return candidates[0]

    def get(self, kind: str, name: str) -> type:
        return self.info(kind, name).cls

    def available(self) -> list[dict[str, str]]:
        rows = [info.to_json() for kind in hookspecs.KINDS
                for name in sorted(self._by_kind[kind]) for info in self._by_kind[kind][name]]
        return rows + [f.to_json() for f in self.failures]

    def conflicts(self) -> dict[tuple[str, str], list[PluginInfo]]:
        return {(kind, name): infos for kind, by_name in self._by_kind.items()
                for name, infos in by_name.items() if len(infos) > 1}


def _check_kind(kind: str) -> None:
    if kind not in hookspecs.KINDS:
        raise UnknownPluginError(_unknown_message("plugin kind", kind, list(hookspecs.KINDS)))


def _check_hook_result(hook_name: str, found: Any) -> None:
    if not isinstance(found, dict):
        raise TypeError(f"returned {type(found).__name__}, expected dict {{name: class}}")
    for name, cls in found.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"plugin name {name!r} is not a non-empty string")
        if not isinstance(cls, type):
            raise TypeError(f"{name!r} maps to {cls!r}, expected a class")


def base_class(kind: str) -> type:
    """The class every plugin of ``kind`` subclasses (the contract of that kind)."""
    from . import aggregator, backbone, dataset, explainer, fill, metric

    return {"backbone": backbone.Backbone, "dataset": dataset.Dataset, "explainer": explainer.Explainer,
            "aggregator": aggregator.Aggregator, "metric": metric.Metric, "fill": fill.Fill}[kind]


def _wrong_base(kind: str, name: str, cls: type) -> str | None:
    """Why ``cls`` cannot be the ``kind`` plugin ``name`` (None when it can): it must subclass the
    kind's base class, so every plugin of a kind keeps one contract."""
    base = base_class(kind)
    if issubclass(cls, base):
        return None
    return (f"{kind} {name!r} is {cls.__module__}.{cls.__qualname__}, which does not subclass "
            f"xaicxr.plugins.{base.__name__}; it was not loaded")


def _unknown_message(kind: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    listing = ", ".join(known) if known else "none"
    return f"unknown {kind} {name!r}.{hint} Available: {listing}."


def _unknown_hook(exc: pluggy.PluginValidationError) -> str:
    """A hook implementation without a hook spec: most often a misspelled hook name."""
    match = re.search(r"unknown hook '([^']+)'", str(exc))
    if match is None:
        return _describe(exc)
    hooks = list(hookspecs.KINDS.values())
    close = difflib.get_close_matches(match.group(1), hooks, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return (f"hook {match.group(1)!r} is not an xaicxr hook{hint} (hooks: {', '.join(hooks)}); "
            "the plugin was not loaded")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
