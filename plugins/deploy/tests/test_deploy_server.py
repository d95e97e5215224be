"""The HTTP API: authentication, authorisation of bundle pulls, Range/ETag, input validation."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from deploy_testlib import ENROLL, Keys, ThreadServer, make_task

from walle_deploy.agent import AgentConfig, DeviceAgent
from walle_deploy.bundle import PackedBundle, pack_task
from walle_deploy.server.hotpaths import BundleCache


def test_admin_routes_need_the_admin_token(server: ThreadServer, bundle: PackedBundle) -> None:
    import httpx

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic admin-secret"}):
        r = httpx.post(f"{server.base}/v1/admin/bundles", content=bundle.path.read_bytes(), headers=headers)
        assert r.status_code == 401 and "admin token" in r.json()["error"]
    assert server.admin.post("/v1/admin/bundles", content=bundle.path.read_bytes()).status_code == 201


def test_enrollment_needs_the_enroll_token_and_unique_ids(server: ThreadServer) -> None:
    import httpx

    r = httpx.post(f"{server.base}/v1/enroll", json={"device_id": "d1"}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    server.enroll("d1", region="eu")
    r = httpx.post(f"{server.base}/v1/enroll", json={"device_id": "d1"}, headers={"Authorization": f"Bearer {ENROLL}"})
    assert r.status_code == 409 and "already enrolled" in r.json()["error"]
    for body in ({"device_id": "../x"}, {"device_id": "ok", "attrs": {"k": 1}}, {"device_id": "ok", "attrs": []}):
        r = httpx.post(f"{server.base}/v1/enroll", json=body, headers={"Authorization": f"Bearer {ENROLL}"})
        assert r.status_code == 400, body


def test_device_token_is_checked(server: ThreadServer) -> None:
    token = server.enroll("d1")
    forged = token.split(":")[0] + ":not-the-secret"
    with server.device(forged) as dev:
        assert dev.get("/v1/device/notices").status_code == 401
    with server.device(token) as dev:
        assert dev.get("/v1/device/notices").json() == {"notices": []}


def test_device_fetches_only_bundles_released_to_it(server: ThreadServer, bundle: PackedBundle) -> None:
    digest = server.publish(bundle)["digest"]
    eu, us = server.enroll("eu-1", region="eu"), server.enroll("us-1", region="us")
    with server.device(eu) as dev_eu, server.device(us) as dev_us:
        assert dev_eu.get(f"/v1/bundles/{digest}").status_code == 403  # published, not released
        server.release(task="demo", version="1.0.0", target="region=eu", stages="100")
        r = dev_eu.get(f"/v1/bundles/{digest}")
        assert r.status_code == 200 and r.content == bundle.path.read_bytes()
        denied = dev_us.get(f"/v1/bundles/{digest}")
        assert denied.status_code == 403 and "not released to device us-1" in denied.json()["error"]
        assert dev_eu.get("/v1/bundles/" + "0" * 64).status_code == 403
        assert dev_eu.get("/v1/bundles/not-a-digest").status_code == 404
        [notice] = dev_eu.get("/v1/device/notices").json()["notices"]
        assert (notice["task"], notice["version"], notice["digest"]) == ("demo", "1.0.0", digest)
        assert notice["url"] == f"{server.base}/v1/bundles/{digest}"
        assert dev_us.get("/v1/device/notices").json()["notices"] == []


def test_range_and_etag(server: ThreadServer, bundle: PackedBundle) -> None:
    digest = server.publish(bundle)["digest"]
    data = bundle.path.read_bytes()
    etag = f'"{digest}"'
    admin = server.admin
    full = admin.get(f"/v1/bundles/{digest}")
    assert full.status_code == 200 and full.headers["etag"] == etag and full.headers["accept-ranges"] == "bytes"
    assert admin.get(f"/v1/bundles/{digest}", headers={"If-None-Match": etag}).status_code == 304
    part = admin.get(f"/v1/bundles/{digest}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == data[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(data)}"
    tail = admin.get(f"/v1/bundles/{digest}", headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == data[-50:]
    rest = admin.get(f"/v1/bundles/{digest}", headers={"Range": f"bytes={len(data) - 10}-"})
    assert rest.content == data[-10:]
    stale = admin.get(f"/v1/bundles/{digest}", headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == data  # validator mismatch: whole file
    beyond = admin.get(f"/v1/bundles/{digest}", headers={"Range": f"bytes={len(data)}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{len(data)}"
    assert admin.get(f"/v1/bundles/{digest}", headers={"Range": "bytes=0-1,5-6"}).status_code == 416
    head = admin.head(f"/v1/bundles/{digest}")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data)) and head.content == b""


def test_bundle_cache_serves_what_is_on_disk(server: ThreadServer, bundle: PackedBundle) -> None:
    """The in-memory copy of a pulled bundle is checked against the file on every pull: a file
    damaged on disk after the first pull is served as it now is (the device's digest check
    then rejects it), never the stale good copy."""
    digest = server.publish(bundle)["digest"]
    data = bundle.path.read_bytes()
    assert server.admin.get(f"/v1/bundles/{digest}").content == data
    stored = server.state.blobs.path(digest)
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0xFF
    stored.write_bytes(bytes(damaged))
    os.utime(stored, ns=(stored.stat().st_atime_ns, stored.stat().st_mtime_ns + 1_000_000))
    assert server.admin.get(f"/v1/bundles/{digest}").content == bytes(damaged)
    assert server.admin.get(f"/v1/bundles/{digest}", headers={"Range": "bytes=0-9"}).content == damaged[:10]
    stored.write_bytes(data[:100])  # truncated
    short = server.admin.get(f"/v1/bundles/{digest}")
    assert short.status_code == 200 and short.content == data[:100]


def test_large_bundles_are_streamed_in_chunks(server: ThreadServer, tmp_path: Path, keys: Keys,
                                              monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Bundles over the cache's entry limit are read from disk in chunks; whole file, ranges and
    the byte count come out the same as from the cache."""
    from walle_deploy.server import hotpaths

    monkeypatch.setattr(hotpaths, "CACHE_ENTRY_MAX", 1000)
    monkeypatch.setattr(hotpaths, "CHUNK", 777)
    packed = pack_task(make_task(tmp_path, payload=bytes(range(256)) * 40), keys.private, tmp_path / "o")
    digest = server.publish(packed)["digest"]
    data = packed.path.read_bytes()
    assert len(data) > 3 * 777
    served = server.state.metrics.bytes_served
    full = server.admin.get(f"/v1/bundles/{digest}")
    assert full.status_code == 200 and full.content == data and full.headers["content-length"] == str(len(data))
    part = server.admin.get(f"/v1/bundles/{digest}", headers={"Range": "bytes=100-2999"})
    assert part.status_code == 206 and part.content == data[100:3000]
    assert server.state.metrics.bytes_served - served == len(data) + 2900
    assert server.admin.head(f"/v1/bundles/{digest}").content == b""


def test_bundle_cache_is_bounded(tmp_path: Path) -> None:
    cache = BundleCache(max_bytes=250)

    async def main() -> None:
        for name in "abc":
            path = tmp_path / name
            path.write_bytes(name.encode() * 100)
            assert await cache.get(path, path.stat()) == name.encode() * 100
        assert cache.size == 200  # "a" was dropped to stay within 250 bytes
        path = tmp_path / "a"
        path.write_bytes(b"z" * 100)
        assert await cache.get(path, path.stat()) == b"z" * 100

    asyncio.run(main())


def test_agent_resumes_a_partial_download(tmp_path: Path, server: ThreadServer, keys: Keys) -> None:
    packed = pack_task(make_task(tmp_path / "big", payload=bytes(range(256)) * 4096), keys.private, tmp_path / "o")
    digest = server.publish(packed)["digest"]
    server.release(task="demo", version="1.0.0", stages="100")
    data = packed.path.read_bytes()

    async def scenario() -> Path:
        agent = DeviceAgent(AgentConfig(server=server.base, device_id="d1", state_dir=tmp_path / "agent",
                                        enroll_token=ENROLL, trusted_keys=keys.trusted))
        try:
            await agent.ensure_enrolled()
            agent.downloads.mkdir(parents=True)
            (agent.downloads / f"{digest}.part").write_bytes(data[: len(data) // 3])  # an interrupted pull
            before = server.state.metrics.bytes_served
            path = await agent.download(f"{server.base}/v1/bundles/{digest}", digest)
            assert server.state.metrics.bytes_served - before == len(data) - len(data) // 3
            return path
        finally:
            await agent.close()

    path = asyncio.run(scenario())
    assert path.read_bytes() == data


def test_corrupt_partial_download_is_detected_and_discarded(tmp_path: Path, server: ThreadServer,
                                                            bundle: PackedBundle, keys: Keys) -> None:
    digest = server.publish(bundle)["digest"]
    server.release(task="demo", version="1.0.0", stages="100")

    async def scenario() -> None:
        agent = DeviceAgent(AgentConfig(server=server.base, device_id="d1", state_dir=tmp_path / "agent",
                                        enroll_token=ENROLL, trusted_keys=keys.trusted))
        try:
            await agent.ensure_enrolled()
            agent.downloads.mkdir(parents=True)
            (agent.downloads / f"{digest}.part").write_bytes(b"garbage")
            with pytest.raises(Exception, match="truncated or tampered"):
                await agent.download(f"{server.base}/v1/bundles/{digest}", digest)
            assert not (agent.downloads / f"{digest}.part").exists()
        finally:
            await agent.close()

    asyncio.run(scenario())


def test_upload_rejects_bad_bundles(tmp_path: Path, server: ThreadServer, keys: Keys, other_keys: Keys,
                                    bundle: PackedBundle) -> None:
    foreign = pack_task(make_task(tmp_path / "f"), other_keys.private, tmp_path / "fo")
    r = server.admin.post("/v1/admin/bundles", content=foreign.path.read_bytes())
    assert r.status_code == 400 and "untrusted key" in r.json()["error"]
    r = server.admin.post("/v1/admin/bundles", content=b"not a tar at all")
    assert r.status_code == 400
    server.publish(bundle)
    assert server.publish(bundle)["digest"] == bundle.digest  # the same bytes again: idempotent
    changed = pack_task(make_task(tmp_path / "c", payload=b"different"), keys.private, tmp_path / "co")
    r = server.admin.post("/v1/admin/bundles", content=changed.path.read_bytes())
    assert r.status_code == 409 and "immutable" in r.json()["error"]


@pytest.mark.parametrize("body, status, fragment", [
    ({"task": "demo", "version": "9.9"}, 404, "not published"),
    ({"task": "demo", "version": "1.0.0", "stages": "10,abc"}, 400, "not a number"),
    ({"task": "demo", "version": "1.0.0", "target": "region"}, 400, "target clause"),
    ({"task": "demo", "version": "1.0.0", "abort_failure_rate": 2}, 400, "abort_failure_rate"),
    ({"task": "demo", "version": "1.0.0", "min_reports": 0}, 400, "min_reports"),
    ({"task": "demo", "version": "1.0.0", "rate": "fast"}, 400, "'rate' must be a number"),
    ({"version": "1.0.0"}, 400, "'task' is required"),
])
def test_release_input_validation(server: ThreadServer, bundle: PackedBundle, body: dict, status: int,
                                  fragment: str) -> None:
    server.publish(bundle)
    r = server.admin.post("/v1/admin/releases", json=body)
    assert r.status_code == status and fragment in r.json()["error"], r.text


def test_malformed_requests_get_clear_4xx(server: ThreadServer, bundle: PackedBundle) -> None:
    assert server.admin.post("/v1/admin/releases", content=b"{not json").status_code == 400
    assert server.admin.post("/v1/admin/releases", json=[1, 2]).status_code == 400
    assert server.admin.get("/v1/admin/tasks/nope/status").status_code == 404
    assert server.admin.post("/v1/admin/tasks/nope/rollback").status_code == 409
    token = server.enroll("d1")
    with server.device(token) as dev:
        assert dev.post("/v1/device/report", json={"release": "1", "state": "installed"}).status_code == 400
        assert dev.post("/v1/device/report", json={"release": 1, "state": "exploded"}).status_code == 400
        assert dev.post("/v1/device/report", json={"release": 99, "state": "installed"}).status_code == 404
        server.publish(bundle)
        rid = server.release(task="demo", version="1.0.0", target="device=someone-else", stages="100")["id"]
        r = dev.post("/v1/device/report", json={"release": rid, "state": "installed"})
        assert r.status_code == 403 and "not released to device d1" in r.json()["error"]
