"""Streams added and removed while a pipeline runs, through the HTTP API and over NATS.

The real CLI runs two file streams at ``rate: native``; a third stream is added and removed
through ``/streams``, a fourth through ``<prefix>.control.streams.*``. The first two must not
notice: no seq gap, no drop. No timing assertions: every wait is a hang guard.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import nats

from pipeline.bus import free_port

from .support import Recorder, finish, start_cli, until

GUARD_S = 60
TOKEN = "s3cret"


def _config(tmp_path: Path, sample: Path, port: int) -> Path:
    config = tmp_path / "live.yaml"
    config.write_text(
        f"""pipeline: control-test
api:
  listen: 127.0.0.1:{port}
  token: {TOKEN}
  media_roots: ['{sample.parent}']
stages:
  - name: cameras
    type: streams
    params:
      streams:
        - {{id: left, uri: {sample}, options: {{rate: native, loop: true}}}}
        - {{id: right, uri: {sample}, options: {{rate: native, loop: true}}}}
  - name: decode
    type: decode
    inputs: [cameras]
  - name: publish
    type: publish
    inputs: [decode]
"""
    )
    return config


async def _wait_ready(http: aiohttp.ClientSession, base: str, auth: dict[str, str]) -> None:
    async def poll() -> None:
        while True:
            try:
                async with http.get(f"{base}/readyz", headers=auth) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)

    await asyncio.wait_for(poll(), timeout=GUARD_S)


async def _request(client: Any, operation: str, body: dict[str, Any]) -> dict[str, Any]:
    """With ``api.token`` set, a control request carries it too."""
    data = json.dumps({**body, "token": TOKEN}).encode()
    reply = await client.request(f"streamgraph.control.streams.{operation}", data, timeout=20)
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


async def test_streams_added_and_removed_live_leave_the_others_untouched(
    nats_server: Any, sample_video: Path, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    config = _config(tmp_path, sample_video, port)
    async with Recorder(nats_server.url, "control-test") as recorder, aiohttp.ClientSession() as http:
        results = recorder.recording.results
        process = await start_cli("run", str(config), "--nats-url", nats_server.url, "--no-progress", env=cli_env)
        try:
            await _wait_ready(http, base, auth)
            await until(lambda: len(results.get("left", [])) >= 5, "results for 'left'")

            async with http.get(f"{base}/streams") as response:
                assert response.status == 401  # the token is required
            async with http.post(f"{base}/streams", json={"id": "left", "uri": str(sample_video)}, headers=auth) as r:
                assert r.status == 409, await r.text()
            async with http.post(f"{base}/streams", json={"id": "x", "uri": "a.mp4", "opts": {}}, headers=auth) as r:
                assert r.status == 400 and "opts" in (await r.json())["error"]

            # A third stream through HTTP: results arrive, then it is removed and ends.
            body = {"id": "http-cam", "uri": str(sample_video), "options": {"rate": "native", "loop": True}}
            async with http.post(f"{base}/streams", json=body, headers=auth) as response:
                assert response.status == 201, await response.text()
                assert response.headers["Location"] == "/streams/http-cam"
            async with http.get(f"{base}/streams", headers=auth) as response:
                assert {s["id"] for s in (await response.json())["streams"]} == {"left", "right", "http-cam"}
            await until(lambda: len(results.get("http-cam", [])) >= 5, "results for the added stream")
            async with http.delete(f"{base}/streams/http-cam", headers=auth) as response:
                assert response.status == 200, await response.text()
            await asyncio.wait_for(recorder.ended("http-cam").wait(), timeout=GUARD_S)
            async with http.delete(f"{base}/streams/http-cam", headers=auth) as response:
                assert response.status == 404

            # A fourth through NATS request/reply.
            client = await nats.connect(nats_server.url)
            try:
                added = await _request(client, "add", {**body, "id": "nats-cam"})
                assert added["ok"] and added["stream"]["id"] == "nats-cam", added
                duplicate = await _request(client, "add", {**body, "id": "nats-cam"})
                assert duplicate == {"ok": False, "status": 409, "error": "stream 'nats-cam' already exists"}
                listed = await _request(client, "list", {})
                assert {s["id"] for s in listed["streams"]} == {"left", "right", "nats-cam"}
                await until(lambda: len(results.get("nats-cam", [])) >= 5, "results for the NATS-added stream")
                removed = await _request(client, "remove", {"id": "nats-cam"})
                assert removed["ok"], removed
                await asyncio.wait_for(recorder.ended("nats-cam").wait(), timeout=GUARD_S)
                unknown = await _request(client, "remove", {"id": "nats-cam"})
                assert unknown["status"] == 404

                # What can be checked at once is refused with the reason; what fails later stays
                # listed as failed, with its error, and is counted.
                lost = tmp_path / "lost.mp4"
                refused = await _request(client, "add", {"id": "lost", "uri": str(lost)})
                assert refused == {"ok": False, "status": 400, "error": f"uri: no such file: {lost}"}
                async with http.post(f"{base}/streams", json={"id": "lost", "uri": str(lost)}, headers=auth) as r:
                    assert r.status == 400 and (await r.json())["error"] == f"uri: no such file: {lost}"
                for bad_id in ("a.b", "*", ">", "../x", "a b", "x" * 1024, ""):
                    refused = await _request(client, "add", {"id": bad_id, "uri": str(sample_video)})
                    assert refused["status"] == 400 and refused["error"].startswith("id: expected a stream id")
                garbage = tmp_path / "garbage.mp4"
                garbage.write_bytes(bytes(range(256)) * 40)
                added = await _request(client, "add", {"id": "garbage", "uri": str(garbage)})
                assert added["ok"], added
                failed: list[dict[str, Any]] = []

                async def poll_failed() -> None:
                    listed = await _request(client, "list", {})
                    failed[:] = [s for s in listed["streams"] if s["state"] == "failed"]

                while not failed:  # hang guard: the test timeout
                    await poll_failed()
                    await asyncio.sleep(0.05)
                assert [s["id"] for s in failed] == ["garbage"] and str(garbage) in failed[0]["error"]
                async with http.get(f"{base}/streams/garbage", headers=auth) as response:
                    assert (await response.json())["state"] == "failed"
                async with http.get(f"{base}/metrics", headers=auth) as response:
                    metrics = await response.text()
                assert 'streamgraph_streams_failed_total{pipeline="control-test",source="cameras"} 1.0' in metrics
            finally:
                await client.drain()
            seen = {stream: len(results.get(stream, [])) for stream in ("left", "right")}
            await until(lambda: all(len(results[s]) > seen[s] for s in seen), "more results after the removals")
        finally:
            process.send_signal(2)  # SIGINT: drain and stop
            await finish(process, recorder.recording)
        for stream_id in ("left", "right"):
            await asyncio.wait_for(recorder.ended(stream_id).wait(), timeout=GUARD_S)

    recording = recorder.recording
    assert recording.returncode == 0, recording.stderr
    for stream_id in ("left", "right"):
        seqs = [m["seq"] for m in recording.results[stream_id]]
        assert seqs == list(range(len(seqs))), f"{stream_id}: a seq gap or reorder"
        assert all(m["drops"]["total"] == 0 for m in recording.results[stream_id])
        ended = recording.events[stream_id][-1]
        assert ended["event"] == "ended" and ended["frames"]["dropped"] == 0
        assert ended["frames"]["decoded"] == ended["frames"]["published"] == len(seqs)
    for stream_id in ("http-cam", "nats-cam"):
        assert recording.event_names(stream_id)[0] == "started"
        assert recording.events[stream_id][-1]["reason"] == "stopped"
        seqs = [m["seq"] for m in recording.results[stream_id]]
        assert seqs == list(range(len(seqs)))
