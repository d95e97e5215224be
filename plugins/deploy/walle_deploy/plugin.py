"""Registers ``walle deploy ...``, ``walle agent`` and the end-to-end ``walle demo`` with the core CLI."""

from __future__ import annotations

import click

from walle_core.hookspecs import hookimpl


@hookimpl
def walle_register_commands(cli: click.Group) -> None:
    from walle_deploy.cli import agent_command, deploy_group
    from walle_deploy.demo import demo_command

    cli.add_command(deploy_group)
    cli.add_command(agent_command)
    # the device-cloud demo replaces the core's model-only `walle demo` (same name, last one wins)
    cli.add_command(demo_command, name="demo")
