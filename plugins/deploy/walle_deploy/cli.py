"""``walle deploy ...`` and ``walle agent``: thin click wrappers; the work happens in the
server, client, agent and simulator modules, imported inside each command so that
``walle --help`` stays fast."""

from __future__ import annotations

import os
import secrets
from contextlib import closing
from pathlib import Path
from typing import Any

import click

DEFAULT_SERVER = "http://127.0.0.1:8470"
#: the simulator's release pacing: a full release never makes the whole fleet pull in the same
#: second (README, "Benchmark" explains the choice)
SIM_RATE = 2000.0
SIM_JITTER_S = 1.0


def _terminal(ctx: click.Context) -> Any:
    from walle_core.cli.terminal import Terminal

    return ctx.obj if isinstance(ctx.obj, Terminal) else Terminal()


def server_options(f: Any) -> Any:
    f = click.option("--server", envvar="WALLE_DEPLOY_SERVER", default=DEFAULT_SERVER, show_default=True,
                     help="Deploy server base URL (env WALLE_DEPLOY_SERVER).")(f)
    return click.option("--token", envvar="WALLE_DEPLOY_TOKEN", default="",
                        help="Admin token (env WALLE_DEPLOY_TOKEN).")(f)


def json_option(f: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")(f)


def parse_attrs(pairs: tuple[str, ...]) -> dict[str, str]:
    attrs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--attr")
        attrs[key.strip()] = value.strip()
    return attrs


def _token_file(path: Path, given: str | None) -> str:
    """Use the given token, else the one saved in ``path``, else create and save one (0600)."""
    if given:
        return given
    if path.is_file():
        return path.read_text().strip()
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


@click.group("deploy")
def deploy_group() -> None:
    """Release tasks to device fleets: signed bundles, staged rollouts, push-then-pull."""


@deploy_group.command("keygen")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("walle-keys"),
              show_default=True)
@click.pass_context
def keygen(ctx: click.Context, out: Path) -> None:
    """Create an Ed25519 publisher key pair (signing.key stays with the publisher, signing.pub goes to
    the server and the devices)."""
    from walle_deploy.signing import generate_keypair

    private, public = generate_keypair(out)
    _terminal(ctx).display(f"private key: {private}\npublic key:  {public}")


@deploy_group.command("server")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("walle-deploy-data"),
              show_default=True, help="SQLite metadata, bundle store and generated tokens.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8470, show_default=True)
@click.option("--admin-token", envvar="WALLE_DEPLOY_TOKEN", default=None,
              help="Admin token; generated into DATA/admin.token when not given.")
@click.option("--enroll-token", envvar="WALLE_DEPLOY_ENROLL_TOKEN", default=None,
              help="Fleet enrollment token; generated into DATA/enroll.token when not given.")
@click.option("--trusted-key", "trusted_keys", multiple=True, required=True,
              type=click.Path(dir_okay=False, exists=True), help="Publisher public key (repeatable).")
@click.option("--public-url", default=None, help="URL devices reach this server at [http://HOST:PORT].")
@click.option("--bundle-base-url", default=None, help="Pull bundles from here instead (CDN in front).")
@click.option("--push", type=click.Choice(["embedded", "mqtt"]), default="embedded", show_default=True)
@click.option("--mqtt", "mqtt_url", default="mqtt://127.0.0.1:1883", show_default=True)
@click.option("--mqtt-prefix", default="walle", show_default=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="uvicorn's log level (info logs every push connection).")
@click.pass_context
def server(ctx: click.Context, data_dir: Path, host: str, port: int, admin_token: str | None,
           enroll_token: str | None, trusted_keys: tuple[str, ...], public_url: str | None,
           bundle_base_url: str | None, push: str, mqtt_url: str, mqtt_prefix: str, log_level: str) -> None:
    """Run the deploy server (SQLite + local bundle store + embedded or MQTT push)."""
    from walle_deploy.server.app import ServerConfig
    from walle_deploy.server.run import serve_forever
    from walle_deploy.signing import TrustedKeys

    data_dir.mkdir(parents=True, exist_ok=True)
    config = ServerConfig(
        data_dir=data_dir, admin_token=_token_file(data_dir / "admin.token", admin_token),
        enroll_token=_token_file(data_dir / "enroll.token", enroll_token),
        trusted_keys=TrustedKeys.from_files(trusted_keys), public_url=public_url or f"http://{host}:{port}",
        bundle_base_url=bundle_base_url, push=make_channel(push, mqtt_url, mqtt_prefix))
    _terminal(ctx).display(f"walle deploy server on http://{host}:{port} (push: {push}); tokens in {data_dir}")
    serve_forever(config, host, port, log_level)


def make_channel(push: str, mqtt_url: str, mqtt_prefix: str) -> Any:
    if push == "mqtt":
        from walle_deploy.push.mqtt import MqttChannel

        return MqttChannel(mqtt_url, mqtt_prefix)
    from walle_deploy.push.embedded import EmbeddedHub

    return EmbeddedHub()


@deploy_group.command("publish")
@click.argument("task_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--key", "key_file", type=click.Path(dir_okay=False, exists=True), required=True,
              help="Ed25519 signing key (walle deploy keygen).")
@server_options
@json_option
@click.pass_context
def publish(ctx: click.Context, task_dir: Path, key_file: str, server: str, token: str, as_json: bool) -> None:
    """Validate TASK_DIR, pack and sign it, upload the bundle and record the version."""
    import tempfile

    from walle_deploy.bundle import pack_task
    from walle_deploy.client import AdminClient
    from walle_deploy.signing import load_private_key

    term = _terminal(ctx)
    with tempfile.TemporaryDirectory() as tmp, closing(AdminClient(server, token)) as client:
        packed = pack_task(task_dir, load_private_key(key_file), tmp)
        result = client.upload(packed.path)
    if as_json:
        term.print_json(result)
    else:
        term.display(f"published {result['task']}@{result['version']} digest {result['digest']} "
                     f"({result['size']} bytes)")


@deploy_group.command("release")
@click.argument("spec", metavar="NAME@VERSION")
@click.option("--target", default="all", show_default=True, help="e.g. 'region=eu,us; app>=2.1; os!=ios'.")
@click.option("--stages", default="1,10,50,100", show_default=True, help="Cumulative %, optionally named: beta=1,full=100.")
@click.option("--stage-target", multiple=True, help="NAME=EXPR: extra target of one stage (repeatable).")
@click.option("--abort-failure-rate", type=click.FloatRange(0, 1), default=0.2, show_default=True)
@click.option("--min-reports", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Max devices notified per second (0: unlimited).")
@click.option("--jitter", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Devices wait a random 0..JITTER s before pulling.")
@click.option("--advance-at", type=click.FloatRange(0, 1, min_open=True), default=0.9, show_default=True,
              help="Fraction of a stage's devices that must report before the next stage.")
@click.option("--manual", is_flag=True, help="Do not advance stages automatically (use 'walle deploy advance').")
@server_options
@json_option
@click.pass_context
def release(ctx: click.Context, spec: str, target: str, stages: str, stage_target: tuple[str, ...],
            abort_failure_rate: float, min_reports: int, rate: float, jitter: float, advance_at: float, manual: bool,
            server: str, token: str, as_json: bool) -> None:
    """Release NAME@VERSION to the devices matching --target, stage by stage."""
    from walle_deploy.client import AdminClient

    name, sep, version = spec.partition("@")
    if not sep or not name or not version:
        raise click.BadParameter(f"{spec!r} is not NAME@VERSION", param_hint="NAME@VERSION")
    stage_targets = {}
    for item in stage_target:
        stage_name, sep, expr = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not NAME=EXPR", param_hint="--stage-target")
        stage_targets[stage_name] = expr
    with closing(AdminClient(server, token)) as client:
        result = client.release(task=name, version=version, target=target, stages=stages,
                                stage_targets=stage_targets, abort_failure_rate=abort_failure_rate,
                                min_reports=min_reports, rate=rate, jitter_s=jitter, advance_at=advance_at,
                                auto_advance=not manual)
    term = _terminal(ctx)
    if as_json:
        term.print_json(result)
    else:
        term.display(f"release {result['id']}: {name}@{version} to '{result['target']}', stages "
                     + " -> ".join(f"{s['name']} ({s['percent']:g}%)" for s in result["stages"]))


@deploy_group.command("status")
@click.argument("name")
@click.option("--all", "show_all", is_flag=True, help="Show every release, not only the newest.")
@server_options
@json_option
@click.pass_context
def status(ctx: click.Context, name: str, show_all: bool, server: str, token: str, as_json: bool) -> None:
    """Per-stage delivery of NAME's releases (targeted / notified / downloaded / installed / failed)
    and the task results devices reported, per version."""
    from walle_deploy.client import AdminClient

    with closing(AdminClient(server, token)) as client:
        report = client.status(name)
    term = _terminal(ctx)
    if as_json:
        term.print_json(report)
        return
    if not report["releases"]:
        term.display(f"{name}: published {', '.join(report['versions'])}; no release yet")
    for rel in report["releases"] if show_all else report["releases"][:1]:
        title = f"{name}@{rel['version']} release {rel['release']}: {rel['state']}"
        if rel["reason"]:
            title += f" ({rel['reason']})"
        rows = [[s["name"] + ("" if s["reached"] else " (pending)"), f"{s['percent']:g}%", s["targeted"],
                 s["notified"], s["downloaded"], s["installed"], s["failed"]] for s in rel["stages"]]
        term.display_table(title, ["stage", "percent", "targeted", "notified", "downloaded", "installed", "failed"],
                           rows)
    results = report.get("results") or {}
    if results:
        rows = [[version, r["devices"], r["inferences"], r["errors"], _ms(r["latency_ms"]["p50"]),
                 _ms(r["latency_ms"]["p99"]), ", ".join(r["backends"]) or "-"] for version, r in sorted(results.items())]
        term.display_table(f"{name}: task results reported by devices (p50: median of devices, p99: worst device)",
                           ["version", "devices", "inferences", "errors", "p50 ms", "p99 ms", "backends"], rows)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _task_action(action: str, verb: str) -> Any:
    @click.argument("name")
    @server_options
    @json_option
    @click.pass_context
    def command(ctx: click.Context, name: str, server: str, token: str, as_json: bool) -> None:
        from walle_deploy.client import AdminClient

        with closing(AdminClient(server, token)) as client:
            result = client.action(name, action)
        term = _terminal(ctx)
        if as_json:
            term.print_json(result)
        else:
            term.display(f"{name}: {verb} release {result['id']} ({result['version']}), now {result['state']} "
                         f"at stage {result['stages'][result['stage_index']]['name']}")

    return command


deploy_group.command("rollback", help="Withdraw NAME's newest release; devices return to the one before.")(
    _task_action("rollback", "back on"))
deploy_group.command("advance", help="Move NAME's active release to its next stage now.")(
    _task_action("advance", "advanced"))


@deploy_group.command("simulate")
@click.option("--devices", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--push", type=click.Choice(["embedded", "mqtt"]), default="embedded", show_default=True)
@click.option("--mqtt", "mqtt_url", default=None, help="Broker URL; default: start a local mosquitto.")
@click.option("--stages", default="1,10,50,100", show_default=True)
@click.option("--rate", type=click.FloatRange(min=0), default=SIM_RATE, show_default=True,
              help="Release rate limit: notices per second (0 = unlimited).")
@click.option("--jitter", type=click.FloatRange(min=0), default=SIM_JITTER_S, show_default=True,
              help="Release jitter: each device waits a random 0..JITTER seconds before it pulls.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Processes the simulated devices are spread over.")
@click.option("--bundle-kib", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@json_option
@click.pass_context
def simulate(ctx: click.Context, devices: int, push: str, mqtt_url: str | None, stages: str, rate: float,
             jitter: float, workers: int, bundle_kib: int, seed: int, as_json: bool) -> None:
    """Simulate a fleet on loopback: a server process, devices in worker processes, real HTTP and push."""
    import asyncio

    from walle_deploy.simulate import SimulationConfig, run_simulation

    term = _terminal(ctx)
    config = SimulationConfig(devices=devices, push=push, mqtt_url=mqtt_url, stages=stages, bundle_kib=bundle_kib,
                              seed=seed, rate=rate, jitter_s=jitter, workers=workers)
    with term.status(f"simulating {devices} devices over {push} push"):
        report = asyncio.run(run_simulation(config))
    if as_json:
        term.print_json(report)
        return
    d, full, cpu = report["delivery_s"], report["full_stage_delivery_s"], report["release_cpu_s"]
    columns = ["devices", "installed", "failed", "p50 s", "p99 s", "full stage p99 s", "bytes served", "server MiB",
               "KiB/device", "server CPU s (release)", "simulator CPU s (release)", "tamper rejected"]
    row = [report["devices"], report["installed"], report["failed"], d["p50"], d["p99"], full["p99"],
           report["bytes_served"], report["server"]["rss_mib"], report["server"]["kib_per_device"],
           f"{report['server']['cpu_s']} ({cpu['server_s']})", f"{report['simulator_cpu_s']} ({cpu['simulator_s']})",
           report["tampered_rejected"]]
    if "broker_cpu_s" in report:
        columns.insert(-1, "broker CPU s")
        row.insert(-1, report["broker_cpu_s"])
    term.display_table(
        f"fleet simulation ({report['push']} push; stages {stages}, rate {rate:g}/s, jitter {jitter:g} s, "
        f"{report['workers']} worker processes)", columns, [row])


@click.command("agent")
@click.option("--server", envvar="WALLE_DEPLOY_SERVER", required=True, help="Deploy server base URL.")
@click.option("--device-id", required=True)
@click.option("--attr", "attrs", multiple=True, help="Device attribute KEY=VALUE (repeatable).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("walle-agent"),
              show_default=True, help="Token, downloads and installed tasks.")
@click.option("--enroll-token", envvar="WALLE_DEPLOY_ENROLL_TOKEN", default=None)
@click.option("--trusted-key", "trusted_keys", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Publisher public key (repeatable); default: pin the server's keys on first use.")
@click.option("--push", type=click.Choice(["embedded", "mqtt"]), default="embedded", show_default=True)
@click.option("--mqtt", "mqtt_url", default=None)
@click.option("--mqtt-prefix", default="walle", show_default=True)
@click.option("--heartbeat", type=click.FloatRange(min=1), default=30.0, show_default=True)
def agent_command(server: str, device_id: str, attrs: tuple[str, ...], state_dir: Path, enroll_token: str | None,
                  trusted_keys: tuple[str, ...], push: str, mqtt_url: str | None, mqtt_prefix: str,
                  heartbeat: float) -> None:
    """Run the device agent: keep the push connection, pull, verify, install and report."""
    import asyncio
    import logging

    from walle_deploy.agent import AgentConfig, DeviceAgent
    from walle_deploy.signing import TrustedKeys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    config = AgentConfig(server=server, device_id=device_id, state_dir=state_dir, attrs=parse_attrs(attrs),
                         enroll_token=enroll_token, trusted_keys=TrustedKeys.from_files(trusted_keys), push=push,
                         mqtt_url=mqtt_url, mqtt_prefix=mqtt_prefix, heartbeat_s=heartbeat)

    async def main() -> None:
        log = logging.getLogger("walle_deploy.agent")
        agent = DeviceAgent(config, on_event=lambda kind, info: log.info("[agent] %s %s", kind, info))
        try:
            await agent.run()
        finally:
            await agent.close()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
