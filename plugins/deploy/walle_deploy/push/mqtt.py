"""The MQTT push channel (paho-mqtt): retained per-group manifests, QoS 1.

Topics (``<prefix>`` defaults to ``walle``)::

    <prefix>/manifest/all        releases whose target does not name groups
    <prefix>/manifest/<group>    releases targeting that ``group`` attribute value

Each message is the complete, retained list of live releases for its topic, so a device
that was offline for a month gets the current state the moment it subscribes, and a
broker cluster (EMQX, VerneMQ, BifroMQ) fans one publish out to millions of subscribers.
Devices evaluate the release policy carried in each entry themselves (see
``walle_deploy.policy``); the server still checks eligibility when they pull.

The device side runs paho inside asyncio (socket callbacks drive ``loop_read`` /
``loop_write``) so one simulator process can hold thousands of clients without a thread each.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt

from walle_deploy.errors import DeployError
from walle_deploy.push import PushChannel

KEEPALIVE_S = 30
_client_ids = itertools.count()


def parse_mqtt_url(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "tcp") or not parsed.hostname:
        raise DeployError(f"[deploy] MQTT URL {url!r} must look like mqtt://HOST:PORT")
    return parsed.hostname, parsed.port or 1883


def topic_for(prefix: str, group: str) -> str:
    return f"{prefix}/manifest/{group}"


class MqttChannel(PushChannel):
    """Server side: publishes retained manifests (paho's own network thread does the I/O)."""

    name = "mqtt"
    per_device = False

    def __init__(self, url: str, prefix: str = "walle") -> None:
        self.host, self.port = parse_mqtt_url(url)
        self.prefix = prefix
        self._published: set[str] = set()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"walle-server-{os.getpid()}",
                                   protocol=mqtt.MQTTv311)

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._client.connect, self.host, self.port, KEEPALIVE_S)
        except OSError as exc:
            raise DeployError(f"[deploy] cannot reach MQTT broker {self.host}:{self.port}: {exc}") from exc
        self._client.loop_start()

    async def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def is_connected(self, device_id: str) -> bool:
        return True

    def connected_count(self) -> int:
        return -1

    async def publish_manifests(self, manifests: dict[str, list[dict[str, Any]]]) -> None:
        infos = []
        topics = {topic_for(self.prefix, group): entries for group, entries in manifests.items()}
        for topic in self._published - set(topics):
            infos.append(self._client.publish(topic, b"", qos=1, retain=True))  # empty retained = delete
        for topic, entries in topics.items():
            payload = json.dumps({"releases": entries}, separators=(",", ":"))
            infos.append(self._client.publish(topic, payload, qos=1, retain=True))
        self._published = set(topics)
        for info in infos:
            await asyncio.to_thread(info.wait_for_publish, 10)


class MqttSubscription:
    """Device side: subscribe to manifest topics and call ``on_manifest(topic, entries)``.

    :meth:`run` returns (raising :class:`ConnectionError`) when the connection drops, so the
    agent's reconnect-with-backoff loop treats MQTT and WebSocket alike."""

    def __init__(self, url: str, topics: list[str], on_manifest: Callable[[str, list[dict[str, Any]]], None],
                 client_id: str | None = None) -> None:
        self.host, self.port = parse_mqtt_url(url)
        self.topics = topics
        self.on_manifest = on_manifest
        cid = client_id or f"walle-dev-{uuid.uuid4().hex[:12]}-{next(_client_ids)}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311,
                                  clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.on_socket_open = self._on_socket_open
        self.client.on_socket_close = self._on_socket_close
        self.client.on_socket_register_write = self._on_register_write
        self.client.on_socket_unregister_write = self._on_unregister_write
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None] | None = None
        self._misc: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    # paho drives the socket through these callbacks; asyncio watches the socket for it
    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_reader(sock, client.loop_read)
        self._misc = self._loop.create_task(self._misc_loop())

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        if self._misc is not None:
            self._misc.cancel()

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    async def _misc_loop(self) -> None:
        while self.client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:
            await asyncio.sleep(1)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._finish(ConnectionError(f"[deploy] MQTT broker refused the connection: {reason}"))
            return
        client.subscribe([(topic, 1) for topic in self.topics])
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if not message.payload:
            self.on_manifest(message.topic, [])
            return
        try:
            data = json.loads(message.payload)
            entries = data["releases"]
            if not isinstance(entries, list):
                raise TypeError("'releases' is not a list")
        except (ValueError, KeyError, TypeError):
            return  # a malformed manifest is ignored; the next retained publish replaces it
        self.on_manifest(message.topic, entries)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._finish(ConnectionError(f"[deploy] MQTT connection lost: {reason}"))

    def _finish(self, exc: Exception) -> None:
        self.subscribed.clear()
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
        try:
            self.client.connect(self.host, self.port, KEEPALIVE_S)
        except OSError as exc:
            raise ConnectionError(f"[deploy] cannot reach MQTT broker {self.host}:{self.port}: {exc}") from exc
        try:
            await self._done
        finally:
            self._close_socket()

    def _close_socket(self) -> None:
        """Stop asyncio watching the socket and close it; paho's state is discarded with us."""
        assert self._loop is not None
        if self._misc is not None:
            self._misc.cancel()
        sock = self.client.socket()
        if sock is None:
            return
        with contextlib.suppress(Exception):
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        with contextlib.suppress(Exception):
            self.client.disconnect()
            self.client.loop_write()
        with contextlib.suppress(Exception):
            sock.close()
