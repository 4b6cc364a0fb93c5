"""The plugin registry: a fresh pluggy manager per run, filled from entry points.

First-party plugins (the ``prefopt_*`` packages) and third-party ones are found
the same way, through the ``prefopt.plugins`` entry-point group. Nothing is
registered by import side effects; each ``PluginRegistry`` is independent, so
tests and runs never leak plugins into one another.
"""

from __future__ import annotations

import difflib
import os
from importlib import metadata
from types import ModuleType
from typing import Iterable

import pluggy

from prefopt import hookspecs
from prefopt.api import API_ATTRIBUTE, API_VERSION, SUPPORTED_API_VERSIONS
from prefopt.errors import PluginError, RecipeError
from prefopt.interfaces import KINDS, Plugin

# Set to 1 to load only prefopt's own plugins (third-party ones are skipped).
DISABLE_AUTOLOAD_ENV = "PREFOPT_DISABLE_PLUGIN_AUTOLOAD"
FIRST_PARTY_DISTRIBUTION = "prefopt"

_HOOK_OF_KIND = {
    "objective": "prefopt_objectives",
    "backbone": "prefopt_backbones",
    "pair_source": "prefopt_pair_sources",
    "evaluator": "prefopt_evaluators",
}


def _distribution_name(entry_point: metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return dist.metadata["Name"] if dist is not None else "?"


def check_api_version(module: ModuleType, origin: str) -> None:
    """Refuse a hook module whose ``PREFOPT_API`` names a plugin API this prefopt does not provide.

    A module that declares nothing is taken to target version 1 (the API before versions were declared).
    """
    declared = getattr(module, API_ATTRIBUTE, 1)
    if isinstance(declared, bool) or declared not in SUPPORTED_API_VERSIONS:
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_API_VERSIONS))
        raise PluginError(
            f"plugin {origin} targets prefopt plugin API {declared!r}, but this prefopt provides "
            f"API {supported} (prefopt.api.API_VERSION = {API_VERSION}): install a version of the plugin "
            f"written for it, or set {DISABLE_AUTOLOAD_ENV}=1 to skip third-party plugins"
        )


def describe(cls: type) -> str:
    """The first line of a plugin class's docstring: its one-line description."""
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


class PluginRegistry:
    """All plugins of one run, by kind and name."""

    def __init__(self, modules: Iterable[ModuleType] = (), autoload: bool = True):
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self._distribution: dict[str, str] = {}  # hook module's registered name -> distribution
        if autoload:
            self._load_entry_points()
        for module in modules:
            self.register_module(module, origin=module.__name__)
        self._by_kind = self._collect()

    def _load_entry_points(self) -> None:
        first_party_only = os.environ.get(DISABLE_AUTOLOAD_ENV, "") not in ("", "0")
        for entry_point in metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            distribution = _distribution_name(entry_point)
            if first_party_only and distribution.lower() != FIRST_PARTY_DISTRIBUTION:
                continue
            try:
                module = entry_point.load()
            except (Exception, SystemExit) as exc:  # reported, never swallowed (nor a sys.exit() at import)
                raise PluginError(
                    f"plugin {entry_point.name!r} from {distribution} ({entry_point.value}) "
                    f"failed to import: {type(exc).__name__}: {exc}"
                ) from exc
            self.register_module(module, origin=f"{distribution}:{entry_point.value}", distribution=distribution)

    def register_module(self, module: ModuleType, origin: str, distribution: str | None = None) -> None:
        if self.manager.is_registered(module):
            return
        check_api_version(module, origin)
        try:
            self.manager.register(module, name=origin)
        except pluggy.PluginValidationError as exc:  # a hook implementation whose signature is not the spec's
            raise PluginError(f"plugin {origin}: {exc}") from None
        self._distribution[origin] = distribution or origin

    def _collect(self) -> dict[str, dict[str, type[Plugin]]]:
        by_kind: dict[str, dict[str, type[Plugin]]] = {kind: {} for kind in KINDS}
        origins: dict[tuple[str, str], str] = {}  # (kind, name) -> who registered it
        for kind, hook_name in _HOOK_OF_KIND.items():
            hook = getattr(self.manager.hook, hook_name)
            for impl in hook.get_hookimpls():
                for cls in self._registered(impl, hook_name):
                    self._add(by_kind[kind], origins, kind, cls, impl.plugin_name)
        self._origins = origins
        return by_kind

    @staticmethod
    def _registered(impl, hook_name: str) -> list:
        """What one plugin's hook returns, as a list; a hook that fails or returns something else is named."""
        try:
            returned = impl.function()
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - a third party's code: any failure, with its origin
            raise PluginError(f"plugin {impl.plugin_name}: {hook_name}() failed: {type(exc).__name__}: {exc}") from exc
        if returned is None:
            return []
        if not isinstance(returned, (list, tuple)):
            raise PluginError(f"plugin {impl.plugin_name}: {hook_name}() must return a list of classes, "
                              f"got {type(returned).__name__}")
        return list(returned)

    def distribution(self, kind: str, name: str) -> str:
        """The installed distribution (pip name) that provides a plugin."""
        origin = self._origins[kind, name]
        return self._distribution.get(origin, origin)

    @staticmethod
    def _add(table: dict, origins: dict, kind: str, cls: type[Plugin], origin: str) -> None:
        base = KINDS[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"{origin} registered {cls!r} as a {kind}, but it is not a {base.__name__}")
        name = cls.name
        if not isinstance(name, str) or not name:
            raise PluginError(f"{origin} registered {cls.__qualname__} as a {kind} whose name is {name!r}, "
                              "not a non-empty string")
        if name in table:
            # Name both distributions, so the user knows which one to uninstall.
            previous = table[name]
            raise PluginError(
                f"two plugins register the {kind} {name!r}: "
                f"{previous.__module__}.{previous.__qualname__} (from {origins[kind, name]}) and "
                f"{cls.__module__}.{cls.__qualname__} (from {origin})"
            )
        table[name] = cls
        origins[kind, name] = origin

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def all(self, kind: str) -> dict[str, type[Plugin]]:
        return dict(sorted(self._by_kind[kind].items()))

    def get(self, kind: str, name: str, where: str | None = None) -> type[Plugin]:
        table = self._by_kind[kind]
        if name in table:
            return table[name]
        label = kind.replace("_", " ")
        close = difflib.get_close_matches(name, table, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        place = f"{where}: " if where else ""
        shown = repr(name) if len(name) <= 60 else repr(name[:60]) + "..."  # a long name must not flood the line
        raise RecipeError(
            f"{place}unknown {label} {shown} (available: {', '.join(sorted(table)) or 'none'}){hint}"
        )
