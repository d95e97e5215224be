"""Registers ``walle deploy ...`` and ``walle agent`` with the core CLI."""

from __future__ import annotations

import click

from walle_core.hookspecs import hookimpl


@hookimpl
def walle_register_commands(cli: click.Group) -> None:
    from walle_deploy.cli import agent_command, deploy_group

    cli.add_command(deploy_group)
    cli.add_command(agent_command)
