"""Plugin registration through pluggy, the same path built-ins use."""

from __future__ import annotations

import numpy as np
import pytest

from walle_core import hookimpl, plugins
from walle_core.reference import ReferenceBackend


class InlineBackend(ReferenceBackend):
    name = "inline_test"
    priority = 1000


class InlinePlugin:
    @hookimpl
    def walle_register_backends(self):
        return [InlineBackend]

    @hookimpl
    def walle_register_decompositions(self, register):
        register("MyCustomOp", lambda ctx, node: [], domain="com.example")


def test_builtin_reference_is_registered_like_any_plugin():
    pm = plugins.get_plugin_manager()
    assert pm.get_plugin("reference") is not None
    assert "reference" in [cls.name for cls in plugins.backend_classes()]
    assert "reference" in plugins.available_backends()


def test_inline_plugin_registers_backend_and_rule():
    pm = plugins.get_plugin_manager()
    plugin = InlinePlugin()
    pm.register(plugin, name="inline")
    try:
        classes = plugins.backend_classes()
        assert classes[0] is InlineBackend  # highest priority first
        assert plugins.available_backends()[0] == "inline_test"
        assert ("com.example", "MyCustomOp") in plugins.decomposition_rules()
    finally:
        pm.unregister(plugin)
    assert "inline_test" not in plugins.available_backends()


def test_walle_plugins_env_restricts_installed_plugins(monkeypatch):
    monkeypatch.setenv("WALLE_PLUGINS", "")
    plugins.reset_plugin_manager()
    try:
        names = [cls.name for cls in plugins.backend_classes()]
        assert names == ["reference"]  # entry-point plugins (cpu_x86, ...) are filtered out
    finally:
        monkeypatch.delenv("WALLE_PLUGINS")
        plugins.reset_plugin_manager()


def test_unknown_backend_is_a_clear_error():
    from walle_core.errors import WalleError
    from walle_core.session import resolve_backends

    with pytest.raises(WalleError, match="unknown backend 'nope'"):
        resolve_backends("nope", 1)
    backends = resolve_backends("reference", 1)
    assert [b.name for b in backends] == ["reference"]
    assert isinstance(backends[0].compile, object) and np is not None


@pytest.mark.parametrize("group", ["walle", "console_scripts", "pytest11"])
def test_entry_points_match_importlib_metadata(group):
    """The core reads entry_points.txt itself (importlib.metadata is a 30 ms import): it must
    find what importlib.metadata finds, and load the same objects."""
    import importlib.metadata

    from walle_core.entry_points import entry_points

    expected = sorted((ep.name, ep.value) for ep in importlib.metadata.entry_points(group=group))
    found = entry_points(group)
    assert sorted((ep.name, ep.value) for ep in found) == expected
    if group == "walle":
        assert expected and all(ep.load() is importlib.metadata.EntryPoint(ep.name, ep.value, group).load()
                                for ep in found)
