"""The HTTP control plane over real HTTP: bearer token, and every malformed request a 4xx.

The app runs on a loopback port in front of a real runner (a ``streams`` source, decode, and a
counting sink); no bus, so ``/readyz`` says why it is not ready.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from pipeline.config import parse_config
from pipeline.control import StreamSpec
from pipeline.errors import StreamError
from pipeline.media import Item
from pipeline.runner import Runner
from pipeline.server import ApiServer, build_app
from pipeline.service import build
from pipeline.stage import Stage

from .support import until

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_AUTH = {**AUTH, "Content-Type": "application/json"}


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
        (b'{"id": "a", "uri": "text.mp4", "options": {"path": "/etc/hostname"}}', 400, "options: 'path' is set by"),
        (b'{"id": "a", "uri": "text.mp4", "options": {"id": "b"}}', 400, "options: 'id' is set by the stream's 'id'"),
        (b'{"id": "a", "uri": "ftp://host/x.mp4"}', 400, "no source takes 'ftp' URIs"),
        (b'{"id": "a", "uri": "rtsp://"}', 400, "options.url"),
        (b'{"id": "a", "uri": "text.mp4", "source": "nope"}', 400, "no 'streams' stage 'nope'"),
        (b'{"id": "a", "uri": "missing.mp4"}', 400, "uri: no such file: "),
        (b'{"id": "a", "uri": "/nowhere/missing.mp4"}', 403, "uri: not a file a stream added at run time may read"),
        (b'{"id": "a.b", "uri": "text.mp4"}', 400, "id: expected a stream id"),
        (b'{"id": "' + b"x" * 1024 + b'", "uri": "text.mp4"}', 400, "id: expected a stream id"),
        (b"[" * 100_000, 400, "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply (more than 32 levels)"),
        (b'{"id": "a", "uri": "text.mp4", "options": {"loop": ' + b"[" * 990 + b"]" * 990 + b"}}", 400, "too deeply"),
        (b'{"id": "a", "uri": "text.mp4", "options": {"loop": ' + b"[" * 30 + b"]" * 30 + b"}}", 400, "options.loop"),
        (b"x" * (2 << 20), 413, "Maximum request body size"),
    ],
)
async def test_malformed_requests_get_a_4xx_that_says_why(
    api: tuple[str, Runner], body: bytes, status: int, says: str
) -> None:
    base, _ = api
    async with aiohttp.ClientSession() as http, http.post(f"{base}/streams", data=body, headers=JSON_AUTH) as r:
        answer = await r.json()
    assert r.status == status, answer
    assert says in answer["error"]


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
)
async def test_a_stream_body_that_is_not_declared_json_is_a_415(
    api: tuple[str, Runner], sample_video: Path, content_type: str | None
) -> None:
    """What a web page of another site can send without the browser asking first (text/plain,
    a form) is refused, even when the bytes are a valid request."""
    base, runner = api
    body = json.dumps({"id": "csrf", "uri": sample_video.name}).encode()
    headers = {**AUTH, "Content-Type": content_type} if content_type else AUTH
    async with aiohttp.ClientSession() as http, http.post(f"{base}/streams", data=body, headers=headers) as r:
        answer = await r.json()
    assert r.status == 415, answer
    given = content_type or "application/octet-stream"  # what aiohttp's client sends for bytes
    assert answer["error"] == f"the body is Content-Type: application/json, got {given!r}"
    assert runner.control.list() == []  # nothing was started


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "null", "https://127.0.0.1", "http://localhost", "http://127.0.0.1:1", "x"]
)
async def test_a_cross_origin_browser_request_that_changes_state_is_a_403(
    api: tuple[str, Runner], sample_video: Path, origin: str
) -> None:
    base, runner = api
    stream = {"id": "csrf", "uri": sample_video.name}
    cross = {**JSON_AUTH, "Origin": origin}
    async with aiohttp.ClientSession() as http:
        for method, path, body in [
            ("POST", "/streams", stream),
            ("DELETE", "/streams/csrf", None),
            ("POST", "/whip/csrf", None),
            ("DELETE", "/whip/csrf/session", None),
        ]:
            async with http.request(method, f"{base}{path}", json=body, headers=cross) as response:
                answer = await response.json()
            assert response.status == 403, (method, path, answer)
            assert answer["error"] == (
                f"cross-origin request refused: Origin {origin!r} is not this API's origin {base!r}"
            )
        assert runner.control.list() == []
        async with http.get(f"{base}/streams", headers=cross) as response:  # reading changes nothing
            assert response.status == 200


async def test_a_same_origin_request_and_one_through_a_proxy_are_served(
    api: tuple[str, Runner], sample_video: Path
) -> None:
    """The ``/publish`` page is served by the API: its requests carry the API's own origin. Behind
    a reverse proxy the origin is the proxy's, which ``X-Forwarded-Proto|Host`` tell."""
    base, runner = api
    proxied = {"Origin": "https://cams.example", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "cams.example"}
    async with aiohttp.ClientSession() as http:
        for stream_id, headers in [("same", {"Origin": base}), ("proxied", proxied)]:
            stream = {"id": stream_id, "uri": sample_video.name, "options": {"rate": "native", "loop": True}}
            async with http.post(f"{base}/streams", json=stream, headers={**AUTH, **headers}) as response:
                assert response.status == 201, await response.text()
            async with http.delete(f"{base}/streams/{stream_id}", headers={**AUTH, **headers}) as response:
                assert response.status == 200, await response.text()
        assert runner.control.list() == []


async def test_bearer_is_case_insensitive(api: tuple[str, Runner]) -> None:
    base, _ = api
    async with aiohttp.ClientSession() as http:
        for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
            async with http.get(f"{base}/streams", headers={"Authorization": f"{scheme} {TOKEN}"}) as response:
                assert response.status == 200, scheme
        for wrong in (f"Basic {TOKEN}", f"Bearer {TOKEN.upper()}", f"Bearer{TOKEN}", f"bearer {TOKEN}x", "bearer"):
            async with http.get(f"{base}/streams", headers={"Authorization": wrong}) as response:
                assert response.status == 401, wrong


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


@pytest.mark.parametrize("stream_id", ["a.b", "*", "%3E", "a%20b", "x" * 1024, "..%2Fx"])
async def test_an_id_in_the_path_that_is_no_stream_id_is_a_400(api: tuple[str, Runner], stream_id: str) -> None:
    base, _ = api
    async with aiohttp.ClientSession() as http:
        for method in ("GET", "DELETE"):
            async with http.request(method, f"{base}/streams/{stream_id}", headers=AUTH) as response:
                answer = await response.json()
            assert response.status == 400, (method, stream_id, answer)
            assert answer["error"].startswith("id: expected a stream id: 1 to 128 letters")


async def test_a_missing_file_is_refused_at_once_naming_the_path(api: tuple[str, Runner], sample_video: Path) -> None:
    base, _ = api
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/streams", json={"id": "lost", "uri": "lost.mp4"}, headers=AUTH) as response:
            answer = await response.json()
        assert response.status == 400
        # Relative to the config's directory, and it says so.
        assert answer["error"] == (
            f"uri: no such file: {sample_video.parent / 'lost.mp4'} "
            f"(a relative path is read from the config's directory, {sample_video.parent})"
        )
        async with http.get(f"{base}/streams", headers=AUTH) as response:
            assert (await response.json())["streams"] == []  # nothing was started


async def test_a_stream_that_fails_later_stays_listed_as_failed_and_is_counted(
    api: tuple[str, Runner], sample_video: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    base, _ = api
    garbage = sample_video.parent / f"garbage-{tmp_path.name}.mp4"  # beside the config: a media root
    garbage.write_bytes(b"\x00not a video\xff" * 64)  # exists: only opening it tells
    request.addfinalizer(garbage.unlink)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{base}/streams", json={"id": "bad", "uri": str(garbage)}, headers=AUTH) as response:
            assert response.status == 201, await response.text()

        async def state() -> dict[str, object]:
            async with http.get(f"{base}/streams/bad", headers=AUTH) as response:
                assert response.status == 200
                stream: dict[str, object] = await response.json()
                return stream

        stream = await state()
        while stream["state"] != "failed":  # hang guard: the test timeout
            await asyncio.sleep(0.05)
            stream = await state()
        assert stream["type"] == "file" and stream["source"] == "src"
        assert str(garbage) in str(stream["error"]) and "Invalid data" in str(stream["error"])
        async with http.get(f"{base}/streams", headers=AUTH) as response:
            assert [s["id"] for s in (await response.json())["streams"]] == ["bad"]
        async with http.get(f"{base}/metrics", headers=AUTH) as response:
            metrics = await response.text()
        assert 'streamgraph_streams_failed_total{pipeline="api-test",source="src"} 1.0' in metrics

        # DELETE forgets a failed stream.
        async with http.delete(f"{base}/streams/bad", headers=AUTH) as response:
            assert response.status == 200
        async with http.get(f"{base}/streams/bad", headers=AUTH) as response:
            assert response.status == 404

        # The id of a failed stream can be used again; its new run is what the id stands for.
        async with http.post(f"{base}/streams", json={"id": "bad", "uri": str(garbage)}, headers=AUTH) as response:
            assert response.status == 201
        while (await state())["state"] != "failed":
            await asyncio.sleep(0.05)
        again = {"id": "bad", "uri": sample_video.name, "options": {"rate": "native", "loop": True}}
        async with http.post(f"{base}/streams", json=again, headers=AUTH) as response:
            assert response.status == 201 and (await response.json())["state"] == "running"
        async with http.get(f"{base}/streams", headers=AUTH) as response:
            assert [s["state"] for s in (await response.json())["streams"]] == ["running"]
        async with http.delete(f"{base}/streams/bad", headers=AUTH) as response:
            assert response.status == 200
        # Stopped on request: not a failure, so not listed and not counted.
        async with http.get(f"{base}/streams/bad", headers=AUTH) as response:
            assert response.status == 404
        async with http.get(f"{base}/metrics", headers=AUTH) as response:
            metrics = await response.text()
        assert 'streamgraph_streams_failed_total{pipeline="api-test",source="src"} 2.0' in metrics


class GiveUpOnDoomed(Stage):
    """A stage that gives up on every stream whose id starts with ``doomed`` at its third frame,
    as a decoder does on corrupt media: the failure is downstream of the source."""

    async def process(self, item: Item) -> tuple[Item, ...]:
        if item.stream_id.startswith("doomed") and item.seq >= 2:
            raise StreamError(item.stream_id, "gave up at frame 2")
        return (item,)


async def test_failed_streams_are_kept_within_their_bound_whoever_failed_them(sample_video: Path) -> None:
    config = parse_config(
        {
            "pipeline": "failing",
            "stages": [
                {"name": "src", "type": "streams", "params": {"keep_failed": 1}},
                {"name": "decode", "type": "decode", "inputs": ["src"]},
                {"name": "judge", "class": f"{__name__}:GiveUpOnDoomed", "inputs": ["decode"]},
                {"name": "sink", "class": "tests.fakes:CountingSink", "inputs": ["judge"]},
            ],
        },
        base_dir=sample_video.parent,
    )
    runner = Runner(build(config), base_dir=sample_video.parent)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(runner.started.wait(), 30)
    control = runner.control
    try:
        for stream_id in ("doomed-1", "doomed-2"):
            await control.add(StreamSpec(id=stream_id, uri=sample_video.name))
            await until(lambda: control.failure(stream_id) is not None, f"{stream_id} failing")  # noqa: B023
            assert "gave up at frame 2" in str(control.failure(stream_id))
        # keep_failed: 1: the older failure has made room for the newer one.
        assert [(s["id"], s["state"]) for s in control.list()] == [("doomed-2", "failed")]
        metrics = runner.metrics.render().decode()
        assert 'streamgraph_streams_failed_total{pipeline="failing",source="src"} 2.0' in metrics
    finally:
        runner.request_stop()
        await asyncio.wait_for(task, 30)
