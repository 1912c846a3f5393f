"""WebRTC ingest over WHIP: a real aiortc peer publishes a file to a pipeline run in this process.

The pipeline (``streams`` -> ``decode`` / ``audio_decode`` -> ``publish``) runs with its HTTP API
on a free port against the session's nats-server; the peer posts its SDP offer to
``/whip/<id>``, sends the sample's video (and audio) with aiortc's ``MediaPlayer``, and the test
reads what arrives on NATS. No timing assertions: every wait is a hang guard.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from pipeline.config import parse_config
from pipeline.errors import ConfigError
from pipeline.runner import Runner
from pipeline.service import build

from .support import GUARD_S, ROOT, Recorder, Running, running_pipeline, until

PIPELINE = "whip-test"


def whip_config(**api: Any) -> dict[str, Any]:
    """Video and audio of streams added at run time, decoded and published."""
    return {
        "pipeline": PIPELINE,
        "api": {"listen": "127.0.0.1:0", **api},
        "runtime": {"threads": 2},
        "stages": [
            {"name": "peers", "type": "streams"},
            {"name": "decode", "type": "decode", "inputs": ["peers"]},
            {"name": "audio", "type": "audio_decode", "inputs": ["peers"]},
            {"name": "publish", "type": "publish", "inputs": ["decode", "audio"]},
        ],
    }


def results_of(recorder: Recorder, stream_id: str) -> list[dict[str, Any]]:
    return recorder.recording.results.get(stream_id, [])


def whip_source(runner: Runner, stream_id: str) -> Any:
    """The child source that runs ``stream_id`` (white box: to check its resources later)."""
    for node in runner.graph.sources:
        child = getattr(node.stage, "_children", {}).get(stream_id)
        if child is not None:
            return child.source
    raise AssertionError(f"no source runs stream {stream_id!r}")


def listed(runner: Runner, stream_id: str) -> bool:
    return any(s["id"] == stream_id for s in runner.control.list())


class Publisher:
    """An aiortc peer publishing a media file over WHIP."""

    def __init__(self, http: aiohttp.ClientSession, base: str, media: Path) -> None:
        self.http = http
        self.base = base
        self.player = MediaPlayer(str(media), loop=True)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.location: str | None = None

    async def offer(self) -> str:
        for track in (self.player.video, self.player.audio):
            if track is not None:
                self.pc.addTransceiver(track, direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def publish(self, stream_id: str, *, tracks: str = "video,audio") -> str:
        """Offer, answer; returns the answer."""
        offer = await self.offer()
        url = f"{self.base}/whip/{stream_id}?tracks={tracks}"
        async with self.http.post(url, data=offer, headers={"Content-Type": "application/sdp"}) as response:
            body = await response.text()
            assert response.status == 201, body
            assert response.content_type == "application/sdp"
            self.location = response.headers["Location"]
        assert self.location.startswith(f"/whip/{stream_id}/")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        return body

    async def close(self) -> None:
        await self.pc.close()
        for track in (self.player.video, self.player.audio):
            if track is not None:
                track.stop()


async def ended_reason(recorder: Recorder, stream_id: str) -> str:
    await asyncio.wait_for(recorder.ended(stream_id).wait(), GUARD_S)
    return str(recorder.recording.events[stream_id][-1]["reason"])


async def read_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Server-sent events as (event, JSON data)."""
    kind = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield kind, json.loads(line.removeprefix("data: "))


@dataclass
class Session:
    recorder: Recorder
    running: Running
    http: aiohttp.ClientSession
    peer: Publisher


@asynccontextmanager
async def publishing(nats_url: str, media: Path) -> AsyncIterator[Session]:
    """A recorder on NATS, the pipeline, and a peer ready to publish ``media`` (closed after)."""
    async with (
        Recorder(nats_url, PIPELINE) as recorder,
        running_pipeline(nats_url, whip_config()) as running,
        aiohttp.ClientSession() as http,
    ):
        peer = Publisher(http, running.url, media)
        try:
            yield Session(recorder, running, http, peer)
        finally:
            await peer.close()


async def assert_released(runner: Runner, source: Any, stream_id: str) -> None:
    """The stream is gone, its peer connection closed, its track readers done, every frame counted."""
    await until(lambda: not listed(runner, stream_id), f"{stream_id} leaving /streams")
    assert source.pc.connectionState == "closed"
    assert not source._readers
    counters = runner.stats.stream(stream_id)
    assert counters.decoded == counters.published + counters.dropped + counters.consumed


async def test_whip_publish_results_then_delete(nats_server: Any, av_sample: Path) -> None:
    async with publishing(nats_server.url, av_sample) as session:
        recorder, url, http, peer = session.recorder, session.running.url, session.http, session.peer
        await peer.publish("cam1")
        source = whip_source(session.running.runner, "cam1")
        async with http.get(f"{url}/streams/cam1/results") as sse:
            assert sse.status == 200 and sse.content_type == "text/event-stream"
            await until(lambda: len(results_of(recorder, "cam1")) >= 20, "results for cam1")
            await until(
                lambda: any(r["time_base"] == "1/16000" for r in results_of(recorder, "cam1")),
                "audio windows for cam1",
            )
            video = [r for r in results_of(recorder, "cam1") if "frame" in r]
            assert video and video[0]["frame"] == {"width": 640, "height": 360}
            assert [r["seq"] for r in video] == sorted(r["seq"] for r in video)
            assert recorder.recording.event_names("cam1")[0] == "started"

            # A duplicate id is the control's 409; a wrong session a 404; the stream goes on.
            sdp = {"Content-Type": "application/sdp"}
            async with http.post(f"{url}/whip/cam1", data="v=0", headers=sdp) as response:
                assert response.status == 409, await response.text()
            async with http.delete(f"{url}/whip/cam1/not-the-session") as response:
                assert response.status == 404
                assert "error" in await response.json()

            async with http.delete(url + peer.location) as response:
                assert response.status == 200, await response.text()
            assert await ended_reason(recorder, "cam1") == "stopped"
            # The relay passed on the stream's messages and ends after its `ended` event.
            relayed = [(kind, body) async for kind, body in read_events(sse)]
        assert any(kind == "result" and body["stream_id"] == "cam1" for kind, body in relayed)
        assert relayed[-1][0] == "event" and relayed[-1][1]["event"] == "ended"
        await assert_released(session.running.runner, source, "cam1")
        # Its session is gone with it.
        async with http.delete(url + peer.location) as response:
            assert response.status == 404


async def test_whip_peer_closes(nats_server: Any, av_sample: Path) -> None:
    async with publishing(nats_server.url, av_sample) as session:
        recorder = session.recorder
        answer = await session.peer.publish("cam2", tracks="video")
        # Audio was not asked for: the peer is told not to send it.
        audio_section = answer[answer.index("m=audio") :]
        assert "a=inactive" in audio_section.split("m=video")[0]
        source = whip_source(session.running.runner, "cam2")
        await until(lambda: len(results_of(recorder, "cam2")) >= 5, "results for cam2")
        await session.peer.close()
        assert await ended_reason(recorder, "cam2") == "eof"
        await assert_released(session.running.runner, source, "cam2")
        assert recorder.recording.event_names("cam2") == ["started", "ended"]
        assert all("frame" in r for r in results_of(recorder, "cam2"))  # video only


async def test_whip_refusals(nats_server: Any, sample_video: Path) -> None:
    token = "s3cret"
    auth = {"Authorization": f"Bearer {token}"}
    async with (
        running_pipeline(nats_server.url, whip_config(token=token)) as running,
        aiohttp.ClientSession() as http,
    ):
        url = running.url
        async with http.post(f"{url}/whip/cam3", data="v=0", headers={**auth, "Content-Type": "text/plain"}) as r:
            assert r.status == 415
            assert "application/sdp" in (await r.json())["error"]
        async with http.post(f"{url}/whip/cam3", data="v=0", headers={"Content-Type": "application/sdp"}) as r:
            assert r.status == 401
        sdp = {**auth, "Content-Type": "application/sdp"}
        async with http.post(f"{url}/whip/cam3", data="not an offer", headers=sdp) as r:
            assert r.status == 400
            assert "cannot answer the offer" in (await r.json())["error"]
        assert not listed(running.runner, "cam3")  # a failed negotiation leaves no stream behind
        async with http.post(f"{url}/whip/cam3?tracks=smell", data="v=0", headers=sdp) as r:
            assert r.status == 400
        async with http.post(f"{url}/whip/bad%20id", data="v=0", headers=sdp) as r:
            assert r.status == 400
        async with http.delete(f"{url}/whip/cam3/nope", headers=auth) as r:
            assert r.status == 404
        async with http.get(f"{url}/streams/bad%20id/results", headers=auth) as r:
            assert r.status == 400
        for bad_wait in ("-1", "61", "nan", "soon"):
            async with http.get(f"{url}/streams/cam3/results?wait_s={bad_wait}", headers=auth) as r:
                assert r.status == 400 and "wait_s" in (await r.json())["error"]
        # A stream that does not run: 404 at once, or after waiting for it (bounded) in vain; either
        # way the relay's subscriptions are gone again.
        client = running.runner._bus.client  # white box: nats-py's subscriptions
        before = len(client._subs)
        async with http.get(f"{url}/streams/cam3/results", headers=auth) as r:
            assert r.status == 404 and (await r.json())["error"] == "no stream 'cam3'"
        async with http.get(f"{url}/streams/cam3/results?wait_s=0.2", headers=auth) as r:
            assert r.status == 404
            assert (await r.json())["error"] == "no stream 'cam3' (waited 0.2 s for it to start)"
        assert len(client._subs) == before
        # The page's way: ask for the results first (wait_s), then start the stream (here a file):
        # the relay has subscribed before the stream starts, so it passes on its very first message.
        follow = asyncio.create_task(http.get(f"{url}/streams/cam3/results?wait_s=60", headers=auth))
        await until(lambda: len(client._subs) == before + 2, "the relay subscribing before its stream exists")
        clip = {"id": "cam3", "uri": str(sample_video), "options": {"rate": "native", "loop": True}}
        async with http.post(f"{url}/streams", json=clip, headers=auth) as r:
            assert r.status == 201, await r.text()
        async with await follow as sse:
            assert sse.status == 200 and sse.content_type == "text/event-stream"
            assert (await sse.content.readline()).startswith(b": relaying cam3")
            events = read_events(sse)
            kind, started = await anext(events)
            assert (kind, started["event"], started["stream_id"]) == ("event", "started", "cam3")
            kind, first = await anext(events)
            assert (kind, first["seq"]) == ("result", 0)
        # The client left: the relay unsubscribes.
        await until(lambda: len(client._subs) == before, "the relay unsubscribing once its client left")
        async with http.delete(f"{url}/streams/cam3", headers=auth) as r:
            assert r.status == 200
        # The page is open (it holds no data; its own requests carry the token).
        async with http.get(f"{url}/publish") as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert "/whip/" in await r.text()


def test_whip_is_not_a_yaml_source() -> None:
    config = whip_config()
    config["stages"][0] = {"name": "peers", "type": "whip", "params": {"id": "cam"}}
    with pytest.raises(ConfigError, match=r"stages\[0\]\.type: .*type: streams"):
        build(parse_config(config, base_dir=ROOT))


async def test_whip_stream_without_publisher_ends(nats_server: Any, av_sample: Path) -> None:
    """A ``whip:`` stream added by ``POST /streams`` that no publisher reaches ends with an error
    after ``connect_timeout_s``, freeing its ``max_streams`` slot and its id."""
    config = whip_config()
    config["stages"][0]["params"] = {"max_streams": 1}
    async with (
        Recorder(nats_server.url, PIPELINE) as recorder,
        running_pipeline(nats_server.url, config) as running,
        aiohttp.ClientSession() as http,
    ):
        url = running.url
        waiting = {"id": "cam5", "uri": "whip:", "options": {"connect_timeout_s": 0.5}}
        async with http.post(f"{url}/streams", json=waiting) as r:
            assert r.status == 201, await r.text()
        assert await ended_reason(recorder, "cam5") == "error"
        events = recorder.recording.events["cam5"]
        assert [e["event"] for e in events] == ["started", "error", "ended"]
        assert events[1]["message"] == "no WHIP publisher within 0.5 s"
        listing = [s for s in running.runner.control.list() if s["id"] == "cam5"]
        assert [(s["state"], s["error"]) for s in listing] == [("failed", "no WHIP publisher within 0.5 s")]

        # The slot (max_streams: 1) and the id are free: a real publisher takes them.
        peer = Publisher(http, url, av_sample)
        try:
            await peer.publish("cam5", tracks="video")
            await until(lambda: len(results_of(recorder, "cam5")) >= 5, "results for cam5 from its publisher")
        finally:
            await peer.close()
