"""Running the server: blocking (``walle deploy server``) or as a task inside an asyncio
program (tests, the fleet simulator)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn

from walle_deploy.server.app import ServerConfig, create_app

#: enough queued connections for a reconnect storm of a simulated fleet
BACKLOG = 8192
#: uvicorn pings every WebSocket every 20 s by default, which at 10,000 devices was 8 % of the
#: server's CPU during a release. Devices' own heartbeats (every 30 s by default) keep NAT
#: mappings alive; the server's ping only has to find half-open connections eventually.
WS_PING_INTERVAL_S = 120.0
WS_PING_TIMEOUT_S = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _uvicorn_config(config: ServerConfig, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(create_app(config), host=host, port=port, log_level=log_level, backlog=BACKLOG,
                          lifespan="on", access_log=False,
                          # notices are ~300 bytes: compression saves nothing and a deflate
                          # context costs tens of KiB per connected device
                          ws_per_message_deflate=False, ws_ping_interval=WS_PING_INTERVAL_S,
                          ws_ping_timeout=WS_PING_TIMEOUT_S)


def serve_forever(config: ServerConfig, host: str, port: int, log_level: str = "info") -> None:
    uvicorn.Server(_uvicorn_config(config, host, port, log_level)).run()


@contextlib.asynccontextmanager
async def serving(config: ServerConfig, host: str, port: int) -> AsyncIterator[uvicorn.Server]:
    """Run the server in the current event loop until the block exits."""
    server = uvicorn.Server(_uvicorn_config(config, host, port, "warning"))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]  # the host program owns signals
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("[deploy] server stopped during startup")
        await asyncio.sleep(0.02)
    try:
        yield server
    finally:
        server.should_exit = True
        await task
