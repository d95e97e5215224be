"""Atomic install, the current/previous switch, rollback, and failed installs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from deploy_testlib import Keys, make_task

from walle_deploy.bundle import pack_task
from walle_deploy.errors import BundleError, DeployError
from walle_deploy.install import TaskInstaller


def packed(tmp_path: Path, keys: Keys, version: str, payload: bytes):
    return pack_task(make_task(tmp_path / "tasks", version=version, payload=payload), keys.private, tmp_path / "out")


def test_install_switch_and_rollback(tmp_path: Path, keys: Keys) -> None:
    v1, v2, v3 = (packed(tmp_path, keys, v, v.encode() * 10) for v in ("1", "2", "3"))
    inst = TaskInstaller(tmp_path / "dev")
    assert inst.current("demo") is None

    first = inst.install(v1.path, keys.trusted, "demo", "1", v1.digest)
    assert (first.version, first.digest) == ("1", v1.digest)
    live = tmp_path / "dev" / "demo" / "current"
    assert (live / "models" / "model.bin").read_bytes() == b"1" * 10

    inst.install(v2.path, keys.trusted, "demo", "2", v2.digest)
    assert (live / "models" / "model.bin").read_bytes() == b"2" * 10
    assert inst.previous("demo").version == "1"

    back = inst.rollback("demo")
    assert back.version == "1" and inst.previous("demo").version == "2"
    assert (live / "models" / "model.bin").read_bytes() == b"1" * 10

    inst.install(v3.path, keys.trusted, "demo", "3", v3.digest)
    kept = sorted(p.name.split("@")[0] for p in (tmp_path / "dev" / "demo" / "versions").iterdir())
    assert kept == ["1", "3"]  # current and previous only; 2 was pruned
    assert inst.tasks() == ["demo"]


def test_failed_install_keeps_current_and_leaves_no_staging(tmp_path: Path, keys: Keys, other_keys: Keys) -> None:
    v1 = packed(tmp_path, keys, "1", b"one")
    evil = pack_task(make_task(tmp_path / "evil", version="2", payload=b"evil"), other_keys.private, tmp_path / "e")
    inst = TaskInstaller(tmp_path / "dev")
    inst.install(v1.path, keys.trusted, "demo", "1", v1.digest)
    with pytest.raises(BundleError, match="untrusted key"):
        inst.install(evil.path, keys.trusted, "demo", "2", evil.digest)
    assert inst.current("demo").version == "1"
    leftovers = [p.name for p in (tmp_path / "dev" / "demo").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert not inst.has("demo", "2", evil.digest)


def test_bundle_for_another_task_is_not_installed_under_this_name(tmp_path: Path, keys: Keys) -> None:
    v1 = packed(tmp_path, keys, "1", b"one")
    with pytest.raises(BundleError, match="expected 'other'"):
        TaskInstaller(tmp_path / "dev").install(v1.path, keys.trusted, "other", "1", v1.digest)


def test_switch_is_a_single_symlink_replacement(tmp_path: Path, keys: Keys) -> None:
    v1, v2 = packed(tmp_path, keys, "1", b"one"), packed(tmp_path, keys, "2", b"two")
    inst = TaskInstaller(tmp_path / "dev")
    inst.install(v1.path, keys.trusted, "demo", "1", v1.digest)
    inst.install(v2.path, keys.trusted, "demo", "2", v2.digest)
    link = tmp_path / "dev" / "demo" / "current"
    assert link.is_symlink() and os.readlink(link) == f"versions/2@{v2.digest}"


def test_rollback_without_previous_is_an_error(tmp_path: Path, keys: Keys) -> None:
    v1 = packed(tmp_path, keys, "1", b"one")
    inst = TaskInstaller(tmp_path / "dev")
    inst.install(v1.path, keys.trusted, "demo", "1", v1.digest)
    with pytest.raises(DeployError, match="no previous version"):
        inst.rollback("demo")
