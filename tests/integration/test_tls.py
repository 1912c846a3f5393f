"""TLS against real servers: a nats-server started with the TLS configuration of docs/security.md
(client certificates required) and the pipeline's own API serving HTTPS, all with a CA and
certificates the test makes."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from pipeline.bus import Bus, NatsServer
from pipeline.config import NatsConfig, parse_config
from pipeline.errors import BusError
from tests.certs import Pki, make_pki

from .secure import configured_server, doc_block
from .support import GUARD_S, running_pipeline, until

TOKEN = "tls-t0ken"


@pytest.fixture()
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture()
def tls_server(pki: Pki, tmp_path: Path) -> Any:
    """nats-server with the documented TLS block, its /etc/nats/ paths pointed at the test's files."""
    block = doc_block("TLS")
    for name, path in (("server.pem", pki.server_cert), ("server-key.pem", pki.server_key), ("ca.pem", pki.ca)):
        block = block.replace(f"/etc/nats/{name}", str(path))
    with configured_server(block, tmp_path) as server:
        yield server


def client_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


def tls_url(server: NatsServer) -> str:
    return f"tls://127.0.0.1:{server.port}"


async def test_a_pipeline_publishes_over_nats_tls_and_serves_its_api_over_https(
    tls_server: NatsServer, pki: Pki, sample_video: Path
) -> None:
    """One service: NATS over TLS with a client certificate (paths relative to the config's
    directory), the API on HTTPS; a TLS subscriber receives its results, an HTTPS client with the
    test's CA reaches /healthz and, with the token, /streams."""
    config = parse_config(
        {
            "pipeline": "tls-test",
            "nats": {
                "url": tls_url(tls_server),
                "tls_ca": pki.ca.name,
                "tls_cert": pki.client_cert.name,
                "tls_key": pki.client_key.name,
            },
            "api": {
                "listen": "127.0.0.1:0",
                "token": TOKEN,
                "tls_cert": pki.server_cert.name,
                "tls_key": pki.server_key.name,
            },
            "stages": [
                {
                    "name": "cameras",
                    "type": "streams",
                    "params": {"streams": [{"id": "clip", "uri": str(sample_video), "options": {"loop": True}}]},
                },
                {"name": "decode", "type": "decode", "inputs": ["cameras"]},
                {"name": "publish", "type": "publish", "inputs": ["decode"]},
            ],
        },
        base_dir=pki.ca.parent,
    )
    subscriber = await nats.connect(tls_url(tls_server), tls=client_context(pki), allow_reconnect=False)
    results: list[dict[str, Any]] = []

    async def on_result(msg: Any) -> None:
        results.append(json.loads(msg.data))

    try:
        await subscriber.subscribe("streamgraph.tls-test.clip", cb=on_result)
        await subscriber.flush()
        async with running_pipeline(tls_url(tls_server), config) as running:
            assert running.url is not None and running.url.startswith("https://127.0.0.1:")
            await until(lambda: len(results) >= 3, "results over NATS TLS")
            assert [r["seq"] for r in results[:3]] == [0, 1, 2]

            trusting = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(pki.ca)))
            async with aiohttp.ClientSession(connector=trusting) as https:
                async with https.get(f"{running.url}/healthz") as response:
                    assert response.status == 200 and await response.json() == {"status": "ok"}
                async with https.get(f"{running.url}/streams") as response:
                    assert response.status == 401
                async with https.get(f"{running.url}/streams", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                    assert r.status == 200
                    assert [s["id"] for s in (await r.json())["streams"]] == ["clip"]

            # A client that does not trust the test's CA refuses the API's certificate...
            async with aiohttp.ClientSession() as untrusting:
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await untrusting.get(f"{running.url}/healthz")
            # ...and the port speaks no plain HTTP.
            plain = running.url.replace("https://", "http://")
            async with aiohttp.ClientSession() as http:
                with pytest.raises(aiohttp.ClientError):
                    async with http.get(f"{plain}/healthz") as response:
                        await response.read()
    finally:
        await subscriber.close()


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ({}, "certificate verify failed"),  # the system's CAs do not know the test's
        ({"tls_cert": "client.pem", "tls_key": "client-key.pem"}, "certificate verify failed"),
        ({"tls_ca": "ca.pem"}, ""),  # the server wants a client certificate: it drops the connection
    ],
)
async def test_nats_tls_refused_without_the_ca_or_the_client_certificate(
    tls_server: NatsServer, pki: Pki, given: dict[str, str], says: str
) -> None:
    config = NatsConfig(url=tls_url(tls_server), connect_timeout_s=2, **given)
    with pytest.raises(BusError) as info:
        await asyncio.wait_for(Bus.connect(config, pipeline="unit", base_dir=pki.ca.parent), GUARD_S)
    assert f"cannot connect to NATS at {tls_url(tls_server)}" in str(info.value)
    assert says in str(info.value)


async def test_a_nats_url_reaches_a_tls_server_with_the_tls_keys(tls_server: NatsServer, pki: Pki) -> None:
    """``nats://`` with ``tls_*`` keys: the client upgrades as the server asks, with our context."""
    config = NatsConfig(
        url=f"nats://127.0.0.1:{tls_server.port}",
        tls_ca=str(pki.ca),
        tls_cert=str(pki.client_cert),
        tls_key=str(pki.client_key),
    )
    bus = await Bus.connect(config, pipeline="unit")
    try:
        listener = await nats.connect(tls_url(tls_server), tls=client_context(pki), allow_reconnect=False)
        try:
            got = await listener.subscribe("streamgraph.unit.x")
            await listener.flush()
            await bus.publish("streamgraph.unit.x", b"over tls")
            message = await got.next_msg(timeout=GUARD_S)
            assert message.data == b"over tls"
        finally:
            await listener.close()
    finally:
        await bus.close()
