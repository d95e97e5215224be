"""Shared fixtures: a publisher key pair, task directories, and a deploy server running in a
background thread on a free loopback port."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from walle_deploy.bundle import PackedBundle, pack_task
from walle_deploy.push import PushChannel
from walle_deploy.push.embedded import EmbeddedHub
from walle_deploy.server.app import ServerConfig, create_app
from walle_deploy.server.run import free_port
from walle_deploy.signing import TrustedKeys, generate_keypair, load_private_key

ADMIN = "admin-secret"
ENROLL = "enroll-secret"


def make_task(root: Path, name: str = "demo", version: str = "1.0.0", payload: bytes = b"weights" * 100) -> Path:
    task_dir = root / f"{name}-{version}"
    (task_dir / "models").mkdir(parents=True)
    (task_dir / "task.toml").write_text(f'name = "{name}"\nversion = "{version}"\nentry = "main.py"\n')
    (task_dir / "main.py").write_text("print('hello')\n")
    (task_dir / "models" / "model.bin").write_bytes(payload)
    return task_dir


@dataclass
class Keys:
    private: Any
    public_path: Path
    trusted: TrustedKeys


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    private, public = generate_keypair(tmp_path / "keys")
    return Keys(load_private_key(private), public, TrustedKeys.from_files([public]))


@pytest.fixture
def other_keys(tmp_path: Path) -> Keys:
    private, public = generate_keypair(tmp_path / "other-keys")
    return Keys(load_private_key(private), public, TrustedKeys.from_files([public]))


@pytest.fixture
def bundle(tmp_path: Path, keys: Keys) -> PackedBundle:
    return pack_task(make_task(tmp_path / "tasks"), keys.private, tmp_path / "out")


class ThreadServer:
    """A deploy server in a background thread, plus admin/device HTTP helpers."""

    def __init__(self, data_dir: Path, keys: TrustedKeys, push: PushChannel) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = ServerConfig(data_dir=data_dir, admin_token=ADMIN, enroll_token=ENROLL, trusted_keys=keys,
                                   public_url=self.base, push=push, flush_interval_s=0.05)
        self.app = create_app(self.config)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    ws_per_message_deflate=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.admin = httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
        # one connection pool for every simulated device: creating an httpx.Client per call
        # costs tens of milliseconds (it loads the CA bundle)
        self.http = httpx.Client(base_url=self.base, timeout=30)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "deploy server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.admin.close()
        self.http.close()
        self.server.should_exit = True
        self.thread.join(timeout=20)

    @property
    def state(self) -> Any:
        return self.app.state.deploy

    def publish(self, packed: PackedBundle) -> dict[str, Any]:
        r = self.admin.post("/v1/admin/bundles", content=packed.path.read_bytes())
        assert r.status_code == 201, r.text
        return r.json()

    def release(self, **fields: Any) -> dict[str, Any]:
        r = self.admin.post("/v1/admin/releases", json=fields)
        assert r.status_code == 201, r.text
        return r.json()

    def enroll(self, device_id: str, **attrs: str) -> str:
        r = self.http.post("/v1/enroll", json={"device_id": device_id, "attrs": attrs},
                           headers={"Authorization": f"Bearer {ENROLL}"})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def device(self, token: str) -> contextlib.nullcontext[DeviceClient]:
        return contextlib.nullcontext(DeviceClient(self.http, token))

    def status(self, task: str) -> dict[str, Any]:
        r = self.admin.get(f"/v1/admin/tasks/{task}/status")
        assert r.status_code == 200, r.text
        return r.json()


class DeviceClient:
    """Requests as one device (its bearer token) over the server's shared pool."""

    def __init__(self, http: httpx.Client, token: str) -> None:
        self.http, self.headers = http, {"Authorization": f"Bearer {token}"}

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, headers={**self.headers, **kw.pop("headers", {})}, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.post(path, headers={**self.headers, **kw.pop("headers", {})}, **kw)


@pytest.fixture
def server(tmp_path: Path, keys: Keys) -> Iterator[ThreadServer]:
    srv = ThreadServer(tmp_path / "server", keys.trusted, EmbeddedHub())
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
