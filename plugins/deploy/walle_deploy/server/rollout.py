"""The release controller: which release each device should run, who to notify when, stage
advancement, automatic abort and rollback.

The rule that everything else follows from: a device's *desired* release of a task is the
newest release of that task that applies to it. A release applies when it is active or
completed and the device falls in a stage the release has reached; an aborted release
applies only to devices already notified (it stops spreading but does not yank versions
from devices that run it); a rolled-back release applies to nobody, so its devices fall
back to the release before it. Notices are recomputed from this rule on every change,
which makes abort, rollback and a device reconnecting after weeks the same code path.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

from walle_deploy.errors import DeployError, PolicyError
from walle_deploy.policy import Stage, first_stage, parse_target
from walle_deploy.push import PushChannel
from walle_deploy.server.store import Delivery, Device, Release, Store

REPORTED = ("installed", "running", "failed")
DOWNLOADED = ("downloaded", "installed", "running")
INSTALLED = ("installed", "running")


class RolloutEngine:
    def __init__(self, store: Store, channel: PushChannel, bundle_url: Callable[[str], str]) -> None:
        self.store = store
        self.channel = channel
        self.bundle_url = bundle_url
        self._stage_of: dict[tuple[int, str], int | None] = {}
        self._targeted: dict[int, list[int]] = {}
        self._counts: dict[int, collections.Counter[str]] = {}
        # (device id, release id, force): force re-sends a notice the device already had (rollback)
        self._outbox: collections.deque[tuple[str, int, bool]] = collections.deque()
        self._wake = asyncio.Event()
        self._next_send: dict[int, float] = {}
        for release in store.releases.values():
            self._count_targets(release)
        for d in store.deliveries.values():
            self._counts.setdefault(d.release_id, collections.Counter())[d.state] += 1

    # ------------------------------------------------------------ policy evaluation

    def stage_of(self, release: Release, device: Device) -> int | None:
        key = (release.id, device.id)
        if key not in self._stage_of:
            self._stage_of[key] = first_stage(release.stages, release.salt, device.id, device.attrs) \
                if parse_target(release.target).matches(device.id, device.attrs) else None
        return self._stage_of[key]

    def applies(self, release: Release, device: Device) -> bool:
        if release.state == "rolled_back":
            return False
        if release.state == "aborted":
            return (release.id, device.id) in self.store.deliveries
        stage = self.stage_of(release, device)
        return stage is not None and stage <= release.stage_index

    def desired(self, device: Device, task: str) -> Release | None:
        for release in self.store.releases_of(task):
            if self.applies(release, device):
                return release
        return None

    def desired_all(self, device: Device) -> list[Release]:
        tasks = sorted({r.task for r in self.store.releases.values()})
        return [r for r in (self.desired(device, t) for t in tasks) if r is not None]

    def may_fetch(self, device: Device, digest: str) -> bool:
        """A device may download a bundle only while some release of it applies to the device."""
        return any(r.digest == digest and self.applies(r, device) for r in self.store.releases.values())

    def _count_targets(self, release: Release) -> None:
        counts = [0] * len(release.stages)
        for device in self.store.devices.values():
            stage = self.stage_of(release, device)
            if stage is not None:
                counts[stage] += 1
        self._targeted[release.id] = counts

    # ------------------------------------------------------------ notices

    def notice(self, release: Release) -> dict[str, Any]:
        return {"type": "notice", "release": release.id, "task": release.task, "version": release.version,
                "digest": release.digest, "size": release.size, "url": self.bundle_url(release.digest),
                "jitter_s": release.jitter_s}

    def manifest_entry(self, release: Release) -> dict[str, Any]:
        """What a broadcast (MQTT) subscriber needs to decide for itself whether a release
        applies: the policy, plus a spread window that turns the rate limit into jitter."""
        newly = self._targeted[release.id][release.stage_index] if release.stages else 0
        spread = newly / release.rate if release.rate > 0 else 0.0
        return {**self.notice(release), "target": release.target, "salt": release.salt,
                "stages": [[s.name, s.percent, s.target] for s in release.stages],
                "stage_index": release.stage_index, "frozen": release.state == "aborted",
                "spread_s": round(spread, 3)}

    def _mark_notified(self, release: Release, device: Device) -> None:
        key = (release.id, device.id)
        if key not in self.store.deliveries:
            stage = self.stage_of(release, device)
            now = time.time()
            self._set_delivery(Delivery(release.id, device.id, -1 if stage is None else stage, "notified", "",
                                        now, now))

    def _set_delivery(self, delivery: Delivery) -> None:
        counts = self._counts.setdefault(delivery.release_id, collections.Counter())
        old = self.store.deliveries.get((delivery.release_id, delivery.device))
        if old is not None:
            counts[old.state] -= 1
        counts[delivery.state] += 1
        self.store.put_delivery(delivery)

    async def _publish(self, releases: list[Release]) -> None:
        """Tell devices about changed releases: per-device notices (embedded channel) or new
        retained manifests (broadcast channel)."""
        if self.channel.per_device:
            for release in releases:
                for device in self.store.devices.values():
                    if self.desired(device, release.task) is not None and self.channel.is_connected(device.id):
                        self._outbox.append((device.id, release.id, False))
            self._wake.set()
            return
        for release in releases:
            for device in self.store.devices.values():
                desired = self.desired(device, release.task)
                if desired is not None:
                    self._mark_notified(desired, device)
        await self.channel.publish_manifests(self.manifests())

    def manifests(self) -> dict[str, list[dict[str, Any]]]:
        """Per-group retained manifests: a release whose target names groups goes to those
        groups' topics, any other release to the ``all`` topic. Newest release first."""
        topics: dict[str, list[dict[str, Any]]] = {"all": []}
        for release in sorted(self.store.releases.values(), key=lambda r: -r.id):
            if release.state == "rolled_back":
                continue
            groups = parse_target(release.target).values_of("group") or ("all",)
            for group in groups:
                topics.setdefault(group, []).append(self.manifest_entry(release))
        return topics

    def on_connect(self, device: Device) -> list[dict[str, Any]]:
        """Notices a device gets when its push connection opens (catch-up after being offline)."""
        releases = self.desired_all(device)
        for release in releases:
            self._mark_notified(release, device)
        return [self.notice(r) for r in releases]

    async def run_outbox(self) -> None:
        """Send queued per-device notices, at most ``release.rate`` per second per release."""
        while True:
            if not self._outbox:
                self._wake.clear()
                await self._wake.wait()
                continue
            device_id, release_id, force = self._outbox.popleft()
            release, device = self.store.releases.get(release_id), self.store.devices.get(device_id)
            if release is None or device is None:
                continue
            desired = self.desired(device, release.task)
            if desired is None or (not force and (desired.id, device.id) in self.store.deliveries):
                continue
            if desired.rate > 0:
                now = time.monotonic()
                slot = max(now, self._next_send.get(desired.id, now))
                self._next_send[desired.id] = slot + 1.0 / desired.rate
                if slot > now:
                    await asyncio.sleep(slot - now)
            if await self.channel.send(device.id, self.notice(desired)):
                self._mark_notified(desired, device)

    # ------------------------------------------------------------ admin actions

    async def create_release(self, task: str, version: str, target: str, stages: tuple[Stage, ...],
                             abort_rate: float, min_reports: int, rate: float, jitter_s: float,
                             advance_at: float, auto_advance: bool) -> Release:
        bundle = self.store.bundle_for(task, version)
        if bundle is None:
            raise DeployError(f"[deploy] {task}@{version} is not published")
        parse_target(target)
        if not 0 <= abort_rate <= 1 or not 0 < advance_at <= 1:
            raise PolicyError("[deploy] abort_failure_rate must be in [0, 1] and advance_at in (0, 1]")
        if min_reports < 1 or rate < 0 or jitter_s < 0:
            raise PolicyError("[deploy] min_reports must be >= 1, rate and jitter_s >= 0")
        for older in self.store.releases_of(task):
            if older.state == "active":
                older.state, older.reason = "completed", f"superseded by release {self.store.next_release_id()}"
                self.store.save_release(older)
        release = Release(self.store.next_release_id(), task, version, bundle.digest, bundle.size, target, stages,
                          task, abort_rate, min_reports, rate, jitter_s, advance_at, auto_advance,
                          stage_started=[time.time()])
        self.store.save_release(release)
        self._count_targets(release)
        await self._publish([release])
        await self._check(release)
        return release

    def latest(self, task: str) -> Release:
        for release in self.store.releases_of(task):
            if release.state != "rolled_back":
                return release
        raise DeployError(f"[deploy] task {task!r} has no release")

    async def advance(self, task: str) -> Release:
        release = self.latest(task)
        if release.state != "active":
            raise DeployError(f"[deploy] release {release.id} of {task} is {release.state}, not active")
        await self._advance(release)
        return release

    async def _advance(self, release: Release) -> None:
        if release.stage_index + 1 >= len(release.stages):
            release.state = "completed"
        else:
            release.stage_index += 1
            release.stage_started.append(time.time())
        self.store.save_release(release)
        await self._publish([release])

    async def rollback(self, task: str) -> Release:
        """Withdraw the newest release; its devices fall back to the release before it."""
        release = self.latest(task)
        if not any(r.id < release.id and r.state != "rolled_back" for r in self.store.releases_of(task)):
            raise DeployError(f"[deploy] {task}: release {release.id} ({release.version}) has no earlier "
                              "release to roll back to")
        release.state, release.reason = "rolled_back", "rolled back by admin"
        self.store.save_release(release)
        fallback = self.latest(task)
        if fallback.state == "completed" and fallback.stage_index + 1 < len(fallback.stages):
            # a release superseded mid-rollout resumes where it stopped
            fallback.state = "active"
            self.store.save_release(fallback)
        if self.channel.per_device:
            for key, delivery in list(self.store.deliveries.items()):
                if key[0] == release.id and self.channel.is_connected(delivery.device):
                    self._outbox.append((delivery.device, fallback.id, True))
            self._wake.set()
        else:
            await self._publish([fallback])
        return fallback

    # ------------------------------------------------------------ device reports

    async def device_seen(self, device: Device, attrs: dict[str, str] | None) -> None:
        """A heartbeat; new attributes re-evaluate the device against every release."""
        device.last_seen = time.time()
        if attrs is not None and attrs != device.attrs:
            device.attrs = attrs
            self.store.save_device(device)
            for key in [k for k in self._stage_of if k[1] == device.id]:
                del self._stage_of[key]
            for release in self.store.releases.values():
                self._count_targets(release)

    def device_enrolled(self, device: Device) -> None:
        for release in self.store.releases.values():
            stage = self.stage_of(release, device)
            if stage is not None:
                self._targeted[release.id][stage] += 1

    async def report(self, device: Device, release_id: int, state: str, reason: str) -> None:
        release = self.store.releases.get(release_id)
        if release is None:
            raise DeployError(f"[deploy] report for unknown release {release_id}")
        key = (release.id, device.id)
        old = self.store.deliveries.get(key)
        if old is None and not self.applies(release, device):
            raise PermissionError(f"[deploy] release {release_id} was not released to device {device.id}")
        stage = self.stage_of(release, device)
        now = time.time()
        self._set_delivery(Delivery(release.id, device.id, -1 if stage is None else stage, state, reason[:500],
                                    old.notified if old else now, now))
        if state in REPORTED:
            await self._check(release)

    async def _check(self, release: Release) -> None:
        """Abort on too many failures, else advance a finished stage (auto-advance only)."""
        if release.state != "active":
            return
        counts = self._counts.get(release.id, collections.Counter())
        failed, done = counts["failed"], sum(counts[s] for s in REPORTED)
        if done >= release.min_reports and failed / done > release.abort_rate:
            release.state = "aborted"
            release.reason = (f"failure rate {failed}/{done} = {failed / done:.1%} exceeded "
                              f"{release.abort_rate:.1%} in stage {release.stages[release.stage_index].name}")
            self.store.save_release(release)
            if not self.channel.per_device:
                await self.channel.publish_manifests(self.manifests())
            return
        targeted = sum(self._targeted[release.id][: release.stage_index + 1])
        if release.auto_advance and (targeted == 0 or done >= release.advance_at * targeted):
            await self._advance(release)
            await self._check(release)

    # ------------------------------------------------------------ reporting

    def status(self, task: str) -> dict[str, Any]:
        releases = self.store.releases_of(task)
        if not releases and not self.store.tasks().get(task):
            raise DeployError(f"[deploy] unknown task {task!r}")
        out = []
        for release in releases:
            per_stage = [collections.Counter() for _ in release.stages]
            for (rid, _), d in self.store.deliveries.items():
                if rid == release.id and 0 <= d.stage < len(per_stage):
                    per_stage[d.stage]["notified"] += 1
                    per_stage[d.stage]["downloaded"] += d.state in DOWNLOADED
                    per_stage[d.stage]["installed"] += d.state in INSTALLED
                    per_stage[d.stage]["failed"] += d.state == "failed"
            stages = []
            for i, stage in enumerate(release.stages):
                stages.append({"name": stage.name, "percent": stage.percent, "target": stage.target,
                               "targeted": self._targeted[release.id][i],
                               "reached": i <= release.stage_index,
                               "started": release.stage_started[i] if i < len(release.stage_started) else None,
                               **{k: per_stage[i][k] for k in ("notified", "downloaded", "installed", "failed")}})
            out.append({"release": release.id, "version": release.version, "digest": release.digest,
                        "state": release.state, "reason": release.reason, "target": release.target,
                        "stage_index": release.stage_index, "stages": stages})
        return {"task": task, "versions": [b.version for b in self.store.tasks().get(task, [])], "releases": out}
