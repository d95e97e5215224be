"""Registers the ``walle stream`` command group with the core CLI."""

from walle_core.hookspecs import hookimpl


@hookimpl
def walle_register_commands(cli):
    from walle_stream.cli import stream_group

    cli.add_command(stream_group)
