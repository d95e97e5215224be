"""The admin side of the HTTP API, for the CLI (synchronous httpx)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from walle_deploy.errors import DeployError


class AdminClient:
    def __init__(self, server: str, token: str, timeout: float = 60.0) -> None:
        if not token:
            raise DeployError("[deploy] no admin token: pass --token or set WALLE_DEPLOY_TOKEN")
        self.base = server.rstrip("/")
        self.http = httpx.Client(base_url=self.base, timeout=timeout,
                                 headers={"Authorization": f"Bearer {token}"})

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            r = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise DeployError(f"[deploy] cannot reach {self.base}: {exc}") from exc
        if r.status_code >= 400:
            try:
                detail = r.json().get("error", r.text)
            except ValueError:
                detail = r.text
            raise DeployError(f"[deploy] {method} {path}: HTTP {r.status_code}: {detail}")
        return r.json()

    def upload(self, bundle: Path) -> dict[str, Any]:
        with open(bundle, "rb") as f:
            return self._call("POST", "/v1/admin/bundles", content=f.read(),
                              headers={"Content-Type": "application/x-tar"})

    def release(self, **fields: Any) -> dict[str, Any]:
        return self._call("POST", "/v1/admin/releases", json=fields)

    def status(self, task: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/admin/tasks/{task}/status")

    def action(self, task: str, action: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/admin/tasks/{task}/{action}")

    def metrics(self) -> dict[str, Any]:
        return self._call("GET", "/v1/admin/metrics")
