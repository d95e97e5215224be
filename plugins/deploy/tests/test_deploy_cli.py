"""The CLI through the core's plugin hook: keygen, publish, release, status, advance, rollback."""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import click
from click.testing import CliRunner
from deploy_testlib import ADMIN, ThreadServer, make_task

from walle_deploy import plugin
from walle_deploy.push.embedded import EmbeddedHub
from walle_deploy.signing import TrustedKeys, generate_keypair


def test_entry_point_and_hook_register_the_commands() -> None:
    [ep] = [ep for ep in entry_points(group="walle") if ep.name == "deploy"]
    assert ep.value == "walle_deploy.plugin"
    root = click.Group("walle")
    plugin.walle_register_commands(cli=root)
    assert {"deploy", "agent"} <= set(root.commands)
    assert {"server", "publish", "release", "status", "rollback", "advance", "simulate", "keygen"} <= \
        set(root.commands["deploy"].commands)


def test_core_cli_loads_the_plugin() -> None:
    from walle_core.cli import build_cli

    result = CliRunner().invoke(build_cli(), ["deploy", "--help"])
    assert result.exit_code == 0 and "simulate" in result.output


def cli() -> click.Group:
    root = click.Group("walle")
    plugin.walle_register_commands(cli=root)
    return root


def test_publish_release_status_advance_rollback(tmp_path: Path) -> None:
    runner = CliRunner()
    keys_dir = tmp_path / "keys"
    assert runner.invoke(cli(), ["deploy", "keygen", "--out", str(keys_dir)]).exit_code == 0
    again = runner.invoke(cli(), ["deploy", "keygen", "--out", str(keys_dir)])
    assert again.exit_code != 0 and "refusing to overwrite" in str(again.exception)
    server = ThreadServer(tmp_path / "server", TrustedKeys.from_files([keys_dir / "signing.pub"]),
                          EmbeddedHub())
    server.start()
    try:
        env = {"WALLE_DEPLOY_SERVER": server.base, "WALLE_DEPLOY_TOKEN": ADMIN}
        for version in ("1.0", "1.1"):
            task = make_task(tmp_path / "tasks", version=version, payload=version.encode())
            r = runner.invoke(cli(), ["deploy", "publish", str(task), "--key", str(keys_dir / "signing.key"),
                                      "--json"], env=env)
            assert r.exit_code == 0, r.output
            assert json.loads(r.output)["version"] == version
        for i in range(20):
            server.enroll(f"d{i}", region="eu")
        r = runner.invoke(cli(), ["deploy", "release", "demo@1.0", "--stages", "100"], env=env)
        assert r.exit_code == 0 and "release 1" in r.output
        r = runner.invoke(cli(), ["deploy", "release", "demo@1.1", "--target", "region=eu",
                                  "--stages", "beta=10,full=100", "--manual", "--json"], env=env)
        assert r.exit_code == 0, r.output
        assert [s["name"] for s in json.loads(r.output)["stages"]] == ["beta", "full"]

        r = runner.invoke(cli(), ["deploy", "status", "demo"], env=env)
        assert r.exit_code == 0 and "targeted" in r.output and "beta" in r.output and "(pending)" in r.output
        r = runner.invoke(cli(), ["deploy", "advance", "demo"], env=env)
        assert r.exit_code == 0 and "at stage full" in r.output
        status = json.loads(runner.invoke(cli(), ["deploy", "status", "demo", "--json"], env=env).output)
        first = status["releases"][0]
        assert first["version"] == "1.1" and first["stage_index"] == 1
        assert sum(s["targeted"] for s in first["stages"]) == 20

        r = runner.invoke(cli(), ["deploy", "rollback", "demo"], env=env)
        assert r.exit_code == 0 and "back on release 1 (1.0)" in r.output
        r = runner.invoke(cli(), ["deploy", "rollback", "demo"], env=env)
        assert r.exit_code != 0 and "no earlier release" in str(r.exception)
        r = runner.invoke(cli(), ["deploy", "release", "demo@9.9"], env=env)
        assert r.exit_code != 0 and "not published" in str(r.exception)
        r = runner.invoke(cli(), ["deploy", "status", "demo"], env={**env, "WALLE_DEPLOY_TOKEN": "wrong"})
        assert r.exit_code != 0 and "HTTP 401" in str(r.exception)
    finally:
        server.stop()


def test_bad_release_spec_is_a_usage_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli(), ["deploy", "release", "no-version", "--token", "x"])
    assert r.exit_code == 2 and "NAME@VERSION" in r.output


def test_agent_requires_server_and_id() -> None:
    r = CliRunner().invoke(cli(), ["agent"])
    assert r.exit_code == 2 and "--server" in r.output


def test_generated_keys_are_usable(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path)
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    assert len(TrustedKeys.from_files([public]).ids()[0]) == 16
