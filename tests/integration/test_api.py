"""The HTTP control plane over real HTTP: bearer token, and every malformed request a 4xx.

The app runs on a loopback port in front of a real runner (a ``streams`` source, decode, and a
counting sink); no bus, so ``/readyz`` says why it is not ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from pipeline.config import parse_config
from pipeline.runner import Runner
from pipeline.server import ApiServer, build_app
from pipeline.service import build

from .support import until

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture()
async def api(sample_video: Path) -> AsyncIterator[tuple[str, Runner]]:
    config = parse_config(
        {
            "pipeline": "api-test",
            "stages": [
                {"name": "src", "type": "streams", "params": {"streams": []}},
                {"name": "decode", "type": "decode", "inputs": ["src"]},
                {"name": "sink", "class": "tests.fakes:CountingSink", "inputs": ["decode"]},
            ],
        },
        base_dir=sample_video.parent,
    )
    runner = Runner(build(config), base_dir=sample_video.parent)
    task = asyncio.create_task(runner.run())
    server = ApiServer(build_app(runner, token=TOKEN), "127.0.0.1", 0)
    await server.start()
    await asyncio.wait_for(runner.started.wait(), 30)
    try:
        yield server.url, runner
    finally:
        await server.stop()
        runner.request_stop()
        await asyncio.wait_for(task, 30)


async def test_the_token_guards_every_route_but_the_probes(api: tuple[str, Runner]) -> None:
    base, _ = api
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{base}/readyz") as response:  # Kubernetes' probes send no token
            assert response.status == 503 and "checks" in await response.json()
        guarded = [("GET", "/streams"), ("POST", "/streams"), ("GET", "/streams/x"), ("DELETE", "/streams/x")]
        for method, path in [*guarded, ("GET", "/streams/x/results"), ("GET", "/metrics")]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                async with http.request(method, f"{base}{path}", headers=headers) as response:
                    assert response.status == 401, (method, path, headers)
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.get(f"{base}/streams", headers=AUTH) as response:
            assert response.status == 200 and await response.json() == {"streams": []}


async def test_readyz_names_what_is_missing(api: tuple[str, Runner]) -> None:
    base, _ = api
    async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as response:
        body = await response.json()
    assert response.status == 503
    checks = {"bus_connected": False, "models_loaded": True, "not_stopping": True, "stages_ready": True}
    assert body == {"ready": False, "checks": checks}


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "expected a JSON object"),
        (b'{"uri": "text.mp4"}', 400, "id: "),
        (b'{"id": "a b", "uri": "text.mp4"}', 400, "id: "),
        (b'{"id": "a", "uri": "text.mp4", "extra": 1}', 400, "extra: unknown key"),
        (b'{"id": "a", "uri": "text.mp4", "options": {"rat": "native"}}', 400, "did you mean 'rate'"),
        (b'{"id": "a", "uri": "text.mp4", "options": {"loop": "yes"}}', 400, "options.loop"),
        (b'{"id": "a", "uri": "ftp://host/x.mp4"}', 400, "no source takes 'ftp' URIs"),
        (b'{"id": "a", "uri": "rtsp://"}', 400, "options.url"),
        (b'{"id": "a", "uri": "text.mp4", "source": "nope"}', 400, "no 'streams' stage 'nope'"),
        (b"x" * (2 << 20), 413, ""),
    ],
)
async def test_malformed_requests_get_a_4xx_that_says_why(
    api: tuple[str, Runner], body: bytes, status: int, says: str
) -> None:
    base, _ = api
    async with aiohttp.ClientSession() as http, http.post(f"{base}/streams", data=body, headers=AUTH) as response:
        answer = await response.json()
    assert response.status == status, answer
    assert says in answer["error"]


async def test_add_list_remove_and_their_errors(api: tuple[str, Runner], sample_video: Path) -> None:
    base, runner = api
    stream = {"id": "clip", "uri": sample_video.name, "options": {"rate": "native", "loop": True}}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/streams", json=stream, headers=AUTH) as response:
            assert response.status == 201
            assert await response.json() == {
                "id": "clip",
                "uri": sample_video.name,
                "type": "file",
                "state": "running",
                "source": "src",
            }
        async with http.post(f"{base}/streams", json=stream, headers=AUTH) as response:
            assert response.status == 409
        async with http.put(f"{base}/streams", json=stream, headers=AUTH) as response:
            assert response.status == 405
        async with http.get(f"{base}/streams/clip", headers=AUTH) as response:
            assert response.status == 200 and (await response.json())["state"] == "running"
        async with http.get(f"{base}/streams/nosuch", headers=AUTH) as response:
            assert response.status == 404 and (await response.json())["error"] == "no stream 'nosuch'"
        while runner.stats.stream("clip").published < 3:  # hang guard: the test timeout
            await asyncio.sleep(0.02)
        async with http.delete(f"{base}/streams/clip", headers=AUTH) as response:
            assert response.status == 200
        async with http.get(f"{base}/streams", headers=AUTH) as response:
            assert (await response.json())["streams"] == []
        async with http.delete(f"{base}/streams/clip", headers=AUTH) as response:
            assert response.status == 404 and (await response.json())["error"] == "no stream 'clip'"
    counters = runner.stats.stream("clip")
    assert counters.decoded > 0
    # DELETE answers once the source has ended the stream; its last frames may still be on their
    # way to the sink. None is lost: every decoded frame arrives (a hang guard, not a timing bound).
    await until(lambda: counters.published == counters.decoded, "every decoded frame of the removed stream")
    assert counters.dropped == 0
