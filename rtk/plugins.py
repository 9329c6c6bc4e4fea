"""The plugin manager: loads every module of the ``rtk`` entry-point group (built-ins included).

A plugin that fails to import is reported as ``rtk failed to load plugin "dist[entry]": cause``;
``RTK_DISABLE_PLUGINS=a,b`` blocks plugins by entry-point name, module or distribution; a hook
implementation that matches no hook spec (a misspelling) is an error, not silently ignored.
"""
from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass

import pluggy

from rtk import hookspecs
from rtk.errors import PluginError

ENTRY_POINT_GROUP = "rtk"


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin comes from (shown by ``rtk list-plugins``)."""

    name: str
    distribution: str
    version: str


def disabled_plugins() -> set[str]:
    return {n.strip() for n in os.environ.get("RTK_DISABLE_PLUGINS", "").split(",") if n.strip()}


def _entry_points():
    return sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP),
        key=lambda ep: (ep.dist.name if ep.dist else "", ep.name),
    )


def new_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("rtk")
    pm.add_hookspecs(hookspecs)
    return pm


def register_plugin(pm: pluggy.PluginManager, plugin, info: PluginInfo, infos: dict) -> None:
    """Register one plugin object, turning pluggy's validation errors into PluginError."""
    try:
        pm.register(plugin, name=info.name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f'rtk plugin "{info.name}" ({info.distribution}) is invalid: {exc}') from exc
    infos[info.name] = info


def check_hooks(pm: pluggy.PluginManager) -> None:
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"{exc} (hook names are register_source_models, register_datasets, register_attacks,"
            " register_objectives, register_transfer_strategies, register_certifiers, register_importers,"
            " register_commands)"
        ) from exc


def load_plugins(
    extra: list[tuple[object, PluginInfo]] = (), entry_points: bool = True
) -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """Build a plugin manager from the entry points (unless disabled) plus ``extra`` plugins."""
    pm = new_plugin_manager()
    infos: dict[str, PluginInfo] = {}
    blocked = disabled_plugins()
    for ep in _entry_points() if entry_points else ():
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        module_name = ep.value.split(":")[0]
        if blocked & {ep.name, module_name, dist}:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # any import-time failure must be named, never swallowed
            raise PluginError(
                f'rtk failed to load plugin "{dist}[{ep.name}]": {type(exc).__name__}: {exc}'
                f" (set RTK_DISABLE_PLUGINS={ep.name} to skip it)"
            ) from exc
        register_plugin(pm, plugin, PluginInfo(module_name, dist, version), infos)
    for plugin, info in extra:
        if info.name not in blocked:
            register_plugin(pm, plugin, info, infos)
    check_hooks(pm)
    return pm, infos
