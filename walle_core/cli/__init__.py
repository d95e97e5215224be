"""The ``walle`` command line. Each command lives in its own module and imports heavy
dependencies inside its body, so ``walle --help`` stays fast; installed plugins add
commands through the ``walle_register_commands`` hook."""

from __future__ import annotations

from typing import Any

import click

from walle_core import __version__
from walle_core.cli.backends import backends
from walle_core.cli.bench import bench
from walle_core.cli.convert import convert
from walle_core.cli.demo import demo
from walle_core.cli.info import info
from walle_core.cli.plan import plan
from walle_core.cli.run import run
from walle_core.cli.task import task_group
from walle_core.cli.terminal import Terminal
from walle_core.errors import WalleError


class WalleGroup(click.Group):
    """Turns every :class:`~walle_core.errors.WalleError` into a one-line message and exit
    code 1: a bad model is the user's problem to fix, not a traceback to read."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WalleError as exc:
            Terminal().display_error(str(exc))
            ctx.exit(1)


def build_cli() -> click.Group:
    """A fresh root group with the built-in commands and every plugin's commands."""
    from walle_core import plugins

    @click.group(cls=WalleGroup, context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(version=__version__, prog_name="walle")
    @click.pass_context
    def root(ctx: click.Context) -> None:
        """Walle: run ONNX models on pluggable backends through 14 atomic ops."""
        ctx.obj = Terminal()

    for command in (backends, info, run, bench, convert, demo, plan, task_group):
        root.add_command(command)
    plugins.get_plugin_manager().hook.walle_register_commands(cli=root)
    return root


def main() -> None:
    build_cli()(prog_name="walle")
