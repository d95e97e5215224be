"""``walle demo`` with the deploy plugin installed: the whole device-cloud loop."""

from __future__ import annotations

from typing import Any

import click


def _check_push(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from walle_deploy.errors import DeployError
    from walle_deploy.push.mqtt import parse_mqtt_url

    try:
        parse_mqtt_url(value)
    except DeployError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@click.command("demo")
@click.option("--devices", type=click.IntRange(min=1, max=2000), default=24, show_default=True,
              help="Simulated devices, each with its own agent, stream engine and user.")
@click.option("--duration", type=click.FloatRange(min=1.0), default=20.0, show_default=True,
              help="Seconds of behaviour traffic; the rollouts happen within it.")
@click.option("--push", "push_url", default=None, callback=_check_push, metavar="mqtt://HOST:PORT",
              help="Push releases through this MQTT broker instead of the embedded WebSocket hub.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic behaviour.")
@click.option("--json", "as_json", is_flag=True, help="Print only a JSON summary on stdout.")
@click.pass_context
def demo_command(ctx: click.Context, devices: int, duration: float, push_url: str | None, seed: int,
                 as_json: bool) -> None:
    """The device-cloud loop on one machine: server, signed staged releases, a simulated
    fleet whose behaviour streams fire an ML task in the compute container, an update
    mid-demo and a broken release that is aborted and rolled back.

    Provided by the deploy plugin; it replaces the core's model-only demo (the example
    CNN, which runs again when the deploy plugin is not loaded, e.g. WALLE_PLUGINS=cpu_x86).
    Exits 0 only when every device updated, triggers fired, inferences ran, the abort +
    rollback was observed and nothing failed unexpectedly."""
    from walle_core.cli.terminal import Terminal
    from walle_deploy.demo.scenario import DemoConfig, run_demo, succeeded
    from walle_deploy.demo.view import LiveView
    from walle_deploy.simulate import run_blocking

    term = ctx.obj if isinstance(ctx.obj, Terminal) else Terminal()
    config = DemoConfig(devices=devices, duration_s=duration, push_url=push_url, seed=seed)
    if as_json:
        summary = run_blocking(run_demo(config))
    else:
        with LiveView(term.out) as view:
            summary = run_blocking(run_demo(config, view.refresh))
    ok = succeeded(summary)
    if as_json:
        term.print_json(summary)
    else:
        _print_summary(term, summary, ok)
    if not ok:
        ctx.exit(1)


def _print_summary(term: Any, summary: dict[str, Any], ok: bool) -> None:
    from walle_deploy.demo.view import releases_table, summary_table

    if not term.out.is_terminal:  # the live view was not shown: tell the story afterwards
        for line in summary["timeline"]:
            term.display(line)
        term.out.print(releases_table(summary))
    term.out.print(summary_table(summary, ok))
    for error in summary["errors"]:
        term.display_error(error)
