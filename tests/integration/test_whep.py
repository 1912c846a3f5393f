"""Watching a stream over WHEP (``view``, ``POST /whep/<id>``) with a real aiortc peer as the
viewer, a pipeline run in this process (real YOLOv4-tiny, real nats-server): the pictures arrive
at the stream's size, with the overlay's label tag where the results put the person; the same
token rules as every route; a viewer that leaves frees its place."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from samples.photos import object_samples
from stages.out.draw import color_of

from .support import GUARD_S, Recorder, running_pipeline, until

TOKEN = "view-token"
PIPELINE = "watch"
STREAM = "person"


def view_config(**view: Any) -> dict[str, Any]:
    """configs/objects.yaml's detector on the person video, looping at its own pace, overlaid and viewable."""
    return {
        "pipeline": PIPELINE,
        "api": {"listen": "127.0.0.1:0", "token": TOKEN},
        "runtime": {"threads": 2},
        "stages": [
            {"name": "video", "type": "file",
             "params": {"path": str(object_samples()["person"]), "id": STREAM, "loop": True, "rate": "native"}},
            {"name": "decode", "type": "decode", "inputs": ["video"]},
            {"name": "detect", "type": "infer", "inputs": ["decode"], "params": {"model": "yolov4-tiny"}},
            {"name": "objects", "type": "yolo", "inputs": ["detect"], "params": {"model": "yolov4-tiny"}},
            {"name": "tracks", "type": "track", "inputs": ["objects"]},
            {"name": "overlay", "type": "overlay", "inputs": ["tracks"]},
            {"name": "view", "type": "view", "inputs": ["overlay"], "params": view},
            {"name": "publish", "type": "publish", "inputs": ["view"]},
        ],
    }  # fmt: skip


def latest_box(recorder: Recorder, label: str) -> list[float]:
    results = recorder.recording.results.get(STREAM, [])
    for message in reversed(results):
        for obj in message["results"]["tracks"]["objects"] if "tracks" in message["results"] else []:
            if obj["label"] == label:
                return list(obj["box"])
        for obj in message["results"].get("objects", {}).get("objects", []):
            if obj["label"] == label:
                return list(obj["box"])
    raise AssertionError(f"no {label} in the results")


def tag_window(box: list[float], width: int, height: int) -> tuple[int, int, int, int]:
    """(x, y, w, h) around where the overlay draws a box's label tag: above its top-left corner
    (or just inside it, when the box touches the top of the frame)."""
    x0, y0 = round(box[0]), round(box[1])
    left, top = max(0, x0 - 10), max(0, y0 - 30)
    return left, top, min(width, x0 + 110) - left, min(height, y0 + 25) - top


def source_frames() -> list[np.ndarray]:
    """The person video's frames as decoded, RGB: what the viewer would see without the overlay."""
    with av.open(str(object_samples()["person"])) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def tag_pixels(rgb: np.ndarray, label: str) -> int:
    """How many pixels of ``rgb`` (n x 3) are the label's tag color, give or take the codec."""
    b, g, r = color_of(label)
    distance = np.abs(rgb.astype(np.int16) - np.array([r, g, b], np.int16)).sum(axis=1)
    return int((distance < 80).sum())


class Viewer:
    """An aiortc peer that plays a stream over WHEP, keeping the pictures it receives (RGB)."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.pc.addTransceiver("video", direction="recvonly")
        self.pictures: list[np.ndarray] = []
        self._task: asyncio.Task[None] | None = None
        self.location: str | None = None

        @self.pc.on("track")
        def _on_track(track: Any) -> None:
            self._task = asyncio.create_task(self._receive(track))

    async def _receive(self, track: Any) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = await track.recv()
                self.pictures.append(frame.to_ndarray(format="rgb24"))

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def answered(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.pc.close()


@contextlib.asynccontextmanager
async def watching(http: aiohttp.ClientSession, base: str, stream: str = STREAM) -> AsyncIterator[Viewer]:
    viewer = Viewer()
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"}
    try:
        async with http.post(f"{base}/whep/{stream}", data=await viewer.offer(), headers=headers) as response:
            assert response.status == 201, await response.text()
            assert response.content_type == "application/sdp"
            viewer.location = response.headers["Location"]
            await viewer.answered(await response.text())
        yield viewer
    finally:
        await viewer.close()


def view_stage(running: Any) -> Any:
    return running.runner.graph.nodes["view"].stage


@pytest.mark.timeout(300)
async def test_a_viewer_gets_the_overlaid_pictures_and_leaving_frees_its_place(nats_server: Any) -> None:
    async with (
        Recorder(nats_server.url, PIPELINE) as recorder,
        running_pipeline(nats_server.url, view_config(max_viewers=1)) as running,
        aiohttp.ClientSession() as http,
    ):
        await until(lambda: len(recorder.recording.results.get(STREAM, [])) >= 3, "results of the stream")
        assert running.runner.graph.nodes["overlay"].stage.drawn == 0  # nobody watches yet: nothing drawn
        async with watching(http, running.url) as viewer:
            await until(lambda: len(viewer.pictures) >= 5, "pictures at the viewer")
            picture = viewer.pictures[-1]
            assert picture.shape == (424, 640, 3)
            box = latest_box(recorder, "person")
            x, y, w, h = tag_window(box, 640, 424)
            drawn = tag_pixels(picture[y : y + h, x : x + w].reshape(-1, 3), "person")
            plain = max(tag_pixels(frame[y : y + h, x : x + w].reshape(-1, 3), "person") for frame in source_frames())
            assert drawn >= 150 > plain, (drawn, plain)  # the tag color, which the video itself lacks there
            assert running.runner.graph.nodes["overlay"].stage.drawn > 0

            # A second viewer is one too many (max_viewers: 1): 503, saying why.
            headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"}
            extra = Viewer()
            async with http.post(f"{running.url}/whep/{STREAM}", data=await extra.offer(), headers=headers) as refused:
                assert refused.status == 503 and "max_viewers" in await refused.text()
            await extra.close()

            # Leaving (DELETE on the Location) closes the viewer and frees its place.
            async with http.delete(
                f"{running.url}{viewer.location}", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as gone:
                assert gone.status == 200
            assert view_stage(running).viewer_count(STREAM) == 0
        async with watching(http, running.url) as again:
            await until(lambda: len(again.pictures) >= 1, "pictures at a second viewer")


@pytest.mark.timeout(300)
async def test_several_viewers_of_one_stream_each_get_the_pictures(nats_server: Any) -> None:
    async with running_pipeline(nats_server.url, view_config()) as running, aiohttp.ClientSession() as http:
        await until(lambda: view_stage(running).shows(STREAM), "the stream at the view stage")
        async with watching(http, running.url) as first, watching(http, running.url) as second:
            await until(lambda: len(first.pictures) >= 3 and len(second.pictures) >= 3, "pictures at both viewers")
            assert view_stage(running).viewer_count(STREAM) == 2
            await second.pc.close()  # gone without a DELETE: its connection closes, its place is freed
            await until(lambda: view_stage(running).viewer_count(STREAM) == 1, "the closed viewer let go")
            count = len(first.pictures)
            await until(lambda: len(first.pictures) > count, "pictures still at the other viewer")


async def test_whep_refuses_what_it_cannot_serve(nats_server: Any) -> None:
    async with running_pipeline(nats_server.url, view_config()) as running, aiohttp.ClientSession() as http:
        base = running.url
        await until(lambda: view_stage(running).shows(STREAM), "the stream at the view stage")
        sdp = await Viewer().offer()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        cases = [
            ({"Content-Type": "application/sdp"}, STREAM, sdp, 401, "bearer token"),
            ({**auth, "Content-Type": "text/plain"}, STREAM, sdp, 415, "application/sdp"),
            ({**auth, "Content-Type": "application/sdp"}, "nobody", sdp, 404, "'nobody' is not running here"),
            ({**auth, "Content-Type": "application/sdp"}, STREAM, "", 400, "empty"),
            ({**auth, "Content-Type": "application/sdp"}, STREAM, "v=0\r\nnonsense", 400, "cannot answer the offer"),
        ]
        for headers, stream, body, status, says in cases:
            async with http.post(f"{base}/whep/{stream}", data=body, headers=headers) as response:
                text = await response.text()
                assert (response.status, says in text) == (status, True), (status, text)
        async with http.delete(f"{base}/whep/{STREAM}/nosuch", headers=auth) as response:
            assert response.status == 404
        # The page is open (it holds nothing); its WHEP request carries the token.
        async with http.get(f"{base}/streams/{STREAM}/view") as response:
            assert response.status == 200 and "/whep/" in await response.text()
        assert GUARD_S > 0
