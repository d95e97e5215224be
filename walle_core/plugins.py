"""The plugin manager: built-in plugins and installed ones (entry-point group ``walle``).

``WALLE_PLUGINS`` restricts which installed plugins load: a comma-separated list of
entry-point names; unset means all of them, an empty string none. The built-in plugins
(``DEFAULT_PLUGINS``) are part of the core and always load.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable
from typing import Any

import pluggy

from walle_core import hookspecs
from walle_core.backend import Backend
from walle_core.entry_points import entry_points

ENTRY_POINT_GROUP = "walle"

#: built-in plugins: name -> module, loaded through the same path as third-party ones
DEFAULT_PLUGINS: dict[str, str] = {
    "reference": "walle_core.reference.backend",
    "decompose": "walle_core.decompose.builtin",
}

_lock = threading.Lock()
_manager: pluggy.PluginManager | None = None


def _allowed() -> set[str] | None:
    raw = os.environ.get("WALLE_PLUGINS")
    if raw is None:
        return None
    return {name.strip() for name in raw.split(",") if name.strip()}


def _build_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("walle")
    pm.add_hookspecs(hookspecs)
    allowed = _allowed()
    for name, module in DEFAULT_PLUGINS.items():
        pm.register(importlib.import_module(module), name=name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the engine down
            pm.register(_BrokenPlugin(ep.name, exc), name=ep.name)
    return pm


class _BrokenPlugin:
    """Stands in for a plugin whose import failed, so `walle backends` can show why."""

    def __init__(self, name: str, error: Exception) -> None:
        self.name = name
        self.error = f"{type(error).__name__}: {error}"


def get_plugin_manager() -> pluggy.PluginManager:
    global _manager
    with _lock:
        if _manager is None:
            _manager = _build_manager()
        return _manager


def reset_plugin_manager() -> None:
    """Forget the manager (tests; after changing WALLE_PLUGINS)."""
    global _manager
    with _lock:
        _manager = None


def broken_plugins() -> dict[str, str]:
    pm = get_plugin_manager()
    return {name: p.error for name, p in pm.list_name_plugin() if isinstance(p, _BrokenPlugin)}


def backend_classes() -> list[type[Backend]]:
    """Every registered backend class, highest priority first (ties by name)."""
    found: dict[str, type[Backend]] = {}
    for result in get_plugin_manager().hook.walle_register_backends():
        for cls in result or []:
            found[cls.name] = cls
    return sorted(found.values(), key=lambda c: (-c.priority, c.name))


def available_backends() -> list[str]:
    """Names of the backends that can run here, in ``backend="auto"`` preference order."""
    return [cls.name for cls in backend_classes() if cls.availability().available]


def decomposition_rules() -> dict[tuple[str, str], Callable[..., Any]]:
    """(domain, op_type) -> rule, from every plugin's ``walle_register_decompositions``."""
    rules: dict[tuple[str, str], Callable[..., Any]] = {}

    def register(op_type: str, rule: Callable[..., Any], domain: str = "") -> None:
        rules[(domain, op_type)] = rule

    pm = get_plugin_manager()
    # get_hookimpls() lists plugins in registration order, so later plugins override
    for impl in pm.hook.walle_register_decompositions.get_hookimpls():
        impl.function(register)
    return rules
