"""The simulator's minimal HTTP/1.1, WebSocket and MQTT clients, against reference peers: the
deploy server itself (uvicorn), the `websockets` library's server, mosquitto with paho as the
publisher, and raw asyncio servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
from deploy_testlib import ENROLL, ThreadServer
from test_deploy_simulate import HAVE_MOSQUITTO

from walle_deploy.bundle import PackedBundle
from walle_deploy.push.mqtt import parse_mqtt_url
from walle_deploy.server.run import free_port
from walle_deploy.simnet import HttpPool, SimNetError, _mask, mqtt_length, open_mqtt, open_websocket
from walle_deploy.simulate import mosquitto


def test_mask_matches_a_bytewise_reference() -> None:
    rng = random.Random(7)
    for n in (0, 1, 3, 4, 5, 125, 126, 127, 65535, 65536, 70001):
        payload, key = rng.randbytes(n), rng.randbytes(4)
        assert _mask(payload, key) == bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def _raw_server(handler) -> tuple[asyncio.Server, int]:  # type: ignore[no-untyped-def]
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_http_pool_reuses_connections_and_survives_an_idle_close() -> None:
    """Sequential requests share one keep-alive connection; when the server drops an idle
    connection, the next request goes out again on a fresh one."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        served = 0
        while (head := await reader.readuntil(b"\r\n\r\n")) and served < 3:
            path = head.split(b" ")[1]
            body = b"hello " + path
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-N: %d\r\n\r\n%s" % (len(body), served, body))
            await writer.drain()
            served += 1
        writer.close()  # after three requests: like a keep-alive timeout

    async def main() -> None:
        server, port = await _raw_server(handler)
        pool = HttpPool("127.0.0.1", port, 1, timeout_s=5)
        try:
            answers = [await pool.request("GET", f"/r{i}") for i in range(5)]
        finally:
            pool.close()
            server.close()
        assert [a.body for a in answers] == [b"hello /r%d" % i for i in range(5)]
        assert [a.headers["x-n"] for a in answers] == ["0", "1", "2", "0", "1"]
        assert connections == 2

    asyncio.run(main())


def test_http_pool_times_out_a_silent_server() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(5)  # never answers in time
        writer.close()

    async def main() -> None:
        server, port = await _raw_server(handler)
        pool = HttpPool("127.0.0.1", port, 1, timeout_s=0.3)
        try:
            started = asyncio.get_running_loop().time()
            with pytest.raises(SimNetError, match="TimeoutError"):
                await pool.request("GET", "/slow")
            assert asyncio.get_running_loop().time() - started < 3
        finally:
            pool.close()
            server.close()

    asyncio.run(main())


@pytest.mark.parametrize("response, message", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "without Content-Length"),
    (b"SPDY/3 200 OK\r\n\r\n", "malformed status line"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
])
def test_http_pool_rejects_what_it_does_not_speak(response: bytes, message: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        await asyncio.sleep(0.5)
        writer.close()

    async def main() -> None:
        server, port = await _raw_server(handler)
        pool = HttpPool("127.0.0.1", port, 1, timeout_s=5)
        try:
            with pytest.raises(SimNetError, match=message):
                await pool.request("GET", "/")
        finally:
            pool.close()
            server.close()

    asyncio.run(main())


def test_websocket_client_against_the_websockets_library() -> None:
    """Handshake check, a fragmented message reassembled, a ping answered, client frames
    masked correctly (the reference server refuses unmasked ones), close handled."""
    from websockets.asyncio.server import serve

    got: list[str] = []

    async def handler(ws) -> None:  # type: ignore[no-untyped-def]
        assert ws.request.headers["Authorization"] == "Bearer t"
        await ws.send(["frag", "mented ", "message"])  # one message in three frames
        await ws.ping()
        got.append(await ws.recv())
        got.append(await ws.recv())
        await ws.close()

    async def main() -> None:
        received: list[bytes] = []
        async with serve(handler, "127.0.0.1", 0, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            ws = await open_websocket("127.0.0.1", port, "/", {"Authorization": "Bearer t"}, received.append)
            while not received:
                await asyncio.sleep(0.01)
            assert ws.send_text(b"x" * 200) and ws.send_text(json.dumps({"a": "\u00e9"}).encode())
            await asyncio.wait_for(ws.closed, 5)
        assert received == [b"fragmented message"]
        assert got == ["x" * 200, '{"a": "\\u00e9"}']
        assert not ws.send_text(b"after close")

    asyncio.run(main())


def test_websocket_upgrade_refused_is_an_error(server: ThreadServer) -> None:
    async def main() -> None:
        with pytest.raises(SimNetError, match="HTTP 403"):
            await open_websocket("127.0.0.1", server.port, "/v1/push", {"Authorization": "Bearer d:nope"},
                                 lambda _: None, timeout_s=5)

    asyncio.run(main())


def test_clients_speak_the_device_protocol_with_the_server(server: ThreadServer, bundle: PackedBundle) -> None:
    """Enroll over the pool, get a notice over the WebSocket, pull the bundle, report over the
    socket: the server's status shows the device installed."""
    published = server.publish(bundle)

    async def main() -> None:
        pool = HttpPool("127.0.0.1", server.port, 2, timeout_s=10)
        notices: list[dict] = []
        try:
            r = await pool.request("POST", "/v1/enroll", {"Authorization": f"Bearer {ENROLL}"},
                                   json.dumps({"device_id": "sim-1", "attrs": {}}).encode())
            assert r.status == 201
            auth = {"Authorization": f"Bearer {json.loads(r.body)['token']}"}
            ws = await open_websocket("127.0.0.1", server.port, "/v1/push", auth,
                                      lambda raw: notices.append(json.loads(raw)))
            await asyncio.to_thread(server.release, task="demo", version="1.0.0", stages="100")
            for _ in range(500):
                if notices:
                    break
                await asyncio.sleep(0.01)
            notice = notices[0]
            assert notice["digest"] == published["digest"]
            pulled = await pool.request("GET", notice["url"].removeprefix(server.base), auth)
            assert pulled.status == 200 and pulled.body == bundle.path.read_bytes()
            assert pulled.headers["etag"] == f'"{published["digest"]}"'
            ws.send_text(json.dumps({"type": "report", "release": notice["release"], "state": "installed"}).encode())
            for _ in range(500):
                stage = (await asyncio.to_thread(server.status, "demo"))["releases"][0]["stages"][0]
                if stage["installed"] == 1:
                    break
                await asyncio.sleep(0.01)
            assert stage["installed"] == 1 and stage["downloaded"] == 1
            ws.close()
        finally:
            pool.close()

    asyncio.run(main())


def test_mqtt_length_matches_the_spec_examples() -> None:
    # MQTT 3.1.1, section 2.2.3: the boundaries of 1 to 4 byte encodings
    table = {0: "00", 127: "7f", 128: "8001", 16383: "ff7f", 16384: "808001", 2097151: "ffff7f",
             2097152: "80808001", 268435455: "ffffff7f"}
    assert {n: mqtt_length(n).hex() for n in table} == table
    with pytest.raises(SimNetError):
        mqtt_length(1 << 28)


@pytest.mark.skipif(not HAVE_MOSQUITTO, reason="mosquitto not installed (CI installs it)")
def test_mqtt_subscriber_against_mosquitto(tmp_path: Path) -> None:
    """A retained message from before the subscription and a live QoS 1 one after it both
    arrive, published by paho (the reference client) through a real broker."""
    import paho.mqtt.client as mqtt

    with mosquitto(free_port(), tmp_path) as url:
        host, port = parse_mqtt_url(url)
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="ref-pub", protocol=mqtt.MQTTv311)
        publisher.connect(host, port)
        publisher.loop_start()
        try:
            big = b"x" * 20000  # a remaining length of three bytes
            publisher.publish("t/retained", big, qos=1, retain=True).wait_for_publish(10)

            async def main() -> list[tuple[str, bytes]]:
                got: list[tuple[str, bytes]] = []
                client = await open_mqtt(host, port, "sim-dev-1", ["t/retained", "t/live"],
                                         lambda topic, payload: got.append((topic, payload)), timeout_s=10)
                await asyncio.to_thread(lambda: publisher.publish("t/live", b'{"a":1}', qos=1).wait_for_publish(10))
                for _ in range(500):
                    if len(got) == 2:
                        break
                    await asyncio.sleep(0.01)
                client.close()
                await asyncio.wait_for(client.closed, 5)
                return got

            got = asyncio.run(main())
        finally:
            publisher.loop_stop()
            publisher.disconnect()
    assert got == [("t/retained", big), ("t/live", b'{"a":1}')]


def test_mqtt_connect_to_nothing_is_an_error() -> None:
    async def main() -> None:
        with pytest.raises(OSError):
            await open_mqtt("127.0.0.1", free_port(), "nobody", ["t"], lambda *_: None, timeout_s=5)

    asyncio.run(main())
