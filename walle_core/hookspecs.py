"""Every plugin hook Walle calls. Plugins (the built-in ones included) implement these with
``@walle_core.hookimpl``; installed plugins are found through the ``walle`` entry-point group."""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("walle")
hookimpl = pluggy.HookimplMarker("walle")


@hookspec
def walle_register_backends():  # type: ignore[empty-body]
    """Called once when the plugin manager starts. Return a list of
    :class:`walle_core.backend.Backend` subclasses (not instances); the core instantiates
    them on demand, after checking ``availability()``."""


@hookspec
def walle_register_decompositions(register):  # type: ignore[empty-body]
    """Called once, when the first model is imported. ``register(op_type, rule, domain="")``
    adds or overrides the decomposition rule of a front-end op; see
    ``walle_core.decompose`` for the rule signature. Later registrations win."""


@hookspec
def walle_register_commands(cli):  # type: ignore[empty-body]
    """Called while the ``walle`` CLI is built. ``cli`` is the root ``click.Group``; add
    subcommands or groups to it."""
