"""Atomic, rollback-able installation of verified bundles into a device's task directory.

Layout under the agent's root::

    <task>/versions/<version>@<digest>/   one verified tree per installed version
    <task>/current  -> versions/...       the version the compute container runs
    <task>/previous -> versions/...       kept for an instant local rollback

A new version is extracted into a staging directory, renamed into ``versions/`` once every
hash matched, and then made live by replacing the ``current`` symlink with ``os.replace``,
which is atomic on POSIX: a reader sees the old tree or the new one, never a mix. At most
two versions are kept; older ones are pruned after the switch.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from walle_deploy.bundle import verify_and_extract
from walle_deploy.errors import DeployError
from walle_deploy.signing import TrustedKeys
from walle_deploy.task import check_name, check_version

CURRENT, PREVIOUS, VERSIONS = "current", "previous", "versions"


@dataclass(frozen=True)
class InstalledVersion:
    task: str
    version: str
    digest: str
    path: Path


class TaskInstaller:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _task_dir(self, task: str) -> Path:
        return self.root / check_name(task)

    def _read_link(self, task: str, link: str) -> InstalledVersion | None:
        task_dir = self._task_dir(task)
        try:
            name = os.path.basename(os.readlink(task_dir / link))
        except OSError:  # no such link (or not a link)
            return None
        version, _, digest = name.rpartition("@")
        target = task_dir / VERSIONS / name
        if not version or not os.path.isdir(target):
            return None
        return InstalledVersion(task, version, digest, target)

    def current(self, task: str) -> InstalledVersion | None:
        return self._read_link(task, CURRENT)

    def previous(self, task: str) -> InstalledVersion | None:
        return self._read_link(task, PREVIOUS)

    def tasks(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / CURRENT).is_symlink())

    def has(self, task: str, version: str, digest: str) -> bool:
        return (self._task_dir(task) / VERSIONS / f"{version}@{digest}").is_dir()

    def install(self, bundle_path: str | Path | IO[bytes], keys: TrustedKeys, task: str, version: str,
                digest: str) -> InstalledVersion:
        """Verify the bundle at ``bundle_path`` (a file, or an open binary stream) and make it the
        current version of ``task``.
        The bundle's own digest must already have been checked by the caller (it came with
        the notice); the manifest must name ``task`` and ``version``."""
        check_version(version)
        task_dir = self._task_dir(task)
        versions = task_dir / VERSIONS
        if not os.path.isdir(versions / f"{version}@{digest}"):
            os.makedirs(versions, exist_ok=True)
            staging = task_dir / f".staging-{os.urandom(12).hex()}"
            try:
                verify_and_extract(bundle_path, keys, staging, expect_task=task, expect_version=version)
                os.replace(staging, versions / f"{version}@{digest}")
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return self.switch(task, version, digest)

    def switch(self, task: str, version: str, digest: str) -> InstalledVersion:
        """Make an already installed version current; the old current becomes previous."""
        name = f"{version}@{digest}"
        task_dir = self._task_dir(task)
        target = task_dir / VERSIONS / name
        if not os.path.isdir(target):
            raise DeployError(f"[deploy] {task} {version} ({digest[:12]}) is not installed on this device")
        old = self.current(task)
        if old is not None and old.path.name != name:
            self._set_link(task_dir, PREVIOUS, old.path.name)
        self._set_link(task_dir, CURRENT, name)
        keep = {name}
        if old is not None and old.path.name != name:
            keep.add(old.path.name)
        elif (kept := self._link_name(task_dir, PREVIOUS)) is not None:
            keep.add(kept)
        self._prune(task_dir, keep)
        return InstalledVersion(task, version, digest, target)

    def rollback(self, task: str) -> InstalledVersion:
        """Swap current and previous (an offline rollback needing no download)."""
        prev = self.previous(task)
        if prev is None:
            raise DeployError(f"[deploy] {task}: no previous version to roll back to")
        return self.switch(task, prev.version, prev.digest)

    @staticmethod
    def _link_name(task_dir: Path, link: str) -> str | None:
        try:
            return os.path.basename(os.readlink(task_dir / link))
        except OSError:
            return None

    @staticmethod
    def _set_link(task_dir: Path, link: str, name: str) -> None:
        tmp = task_dir / f".{link}-{os.urandom(12).hex()}"
        os.symlink(f"{VERSIONS}/{name}", tmp)
        os.replace(tmp, task_dir / link)

    @staticmethod
    def _prune(task_dir: Path, keep: set[str]) -> None:
        """Remove every version but ``keep`` (the new current and the new previous)."""
        versions = task_dir / VERSIONS
        for name in os.listdir(versions):
            if name not in keep:
                shutil.rmtree(versions / name, ignore_errors=True)
