"""What watching costs: the overlay's drawing per frame, the WebRTC encoder per frame, and the
glass-to-glass latency of a stream watched over WHEP.

Run it from the repository root:

    .venv/bin/python bench/view.py [--seconds 20] [--markdown]

* **overlay**: ``stages.out.draw.draw_results`` on a copy of a frame with 5 labelled, tracked
  boxes and a status line, against the copy alone (what ``overlay`` costs besides), at 640x424,
  1280x720 and 1920x1080; median of 200.
* **encoder**: aiortc's VP8 and H.264 encoders (what ``view`` runs per viewer) on the same
  frames, median of 100 (after 10 to warm up).
* **glass to glass**: an aiortc peer publishes a 640x480, 25 frames/s camera over WHIP whose every
  frame carries, drawn into its pixels, the wall-clock millisecond it was made (a 32-bit code in
  black and white blocks); the pipeline (WHIP in -> decode -> [YOLOv4-tiny -> yolo -> track] ->
  overlay -> view) sends it to an aiortc viewer over WHEP, which reads the code back from each
  picture it decodes: the latency is the moment it decoded it minus the code. One process, one
  clock, loopback network. Run twice: with the detector, and without it (the same path with no
  model: the baseline, what WebRTC in and out cost alone). The results' own ``latency_ms.total``
  (capture at the WHIP source to publish) is shown beside it.

It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import av
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.codecs import get_encoder
from aiortc.mediastreams import VideoStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from pipeline.config import parse_config
from pipeline.pictures import SceneGeometry
from pipeline.service import run_pipeline
from stages.out.draw import draw_results

WIDTH, HEIGHT, FPS = 640, 480, 25
BITS, BLOCK = 32, 16
"""The time code: 32 blocks of 16x16 pixels in two rows at the top left, white for a 1."""


def encode_time(image: np.ndarray, millis: int) -> None:
    for bit in range(BITS):
        row, column = divmod(bit, 16)
        value = 255 if (millis >> bit) & 1 else 0
        image[row * BLOCK : (row + 1) * BLOCK, column * BLOCK : (column + 1) * BLOCK] = value


def decode_time(image: np.ndarray) -> int:
    millis = 0
    for bit in range(BITS):
        row, column = divmod(bit, 16)
        block = image[row * BLOCK + 4 : (row + 1) * BLOCK - 4, column * BLOCK + 4 : (column + 1) * BLOCK - 4]
        if block.mean() > 128:
            millis |= 1 << bit
    return millis


def now_millis() -> int:
    return int(time.time() * 1000) & 0xFFFFFFFF


class TimeCodeCamera(VideoStreamTrack):
    """A 25 frames/s camera whose every frame shows the millisecond it was made."""

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        image = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
        encode_time(image, now_millis())
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    return (
        f"p50 {at(0.5):.0f} ms, p95 {at(0.95):.0f} ms, p99 {at(0.99):.0f} ms, max {ordered[-1]:.0f} ms ({len(values)})"
    )


# --- per-frame costs -----------------------------------------------------------------------------


def frame_results(width: int, height: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    objects = []
    for index, label in enumerate(["person", "dog", "car", "bicycle", "person"]):
        x0, y0 = rng.uniform(0, width * 0.7), rng.uniform(0, height * 0.7)
        box = [x0, y0, x0 + width * 0.2, y0 + height * 0.25]
        objects.append({"label": label, "score": 0.9, "box": box, "track_id": index + 1, "attributes": {}})
    return {"objects": {"type": "object_detection", "objects": objects}}


def overlay_costs() -> list[tuple[str, float, float]]:
    rows = []
    for width, height in ((640, 424), (1280, 720), (1920, 1080)):
        frame = np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8)
        results = frame_results(width, height)
        scene = SceneGeometry(zones={"z": [(0.0, 0.0), (width / 2, 0.0), (width / 2, height / 2.0)]},
                              zone_counts={"z": {"person": 1}}, lines={"l": ((width / 2, 0.0), (width / 2, height))},
                              line_counts={"l": {"left": 3}})  # fmt: skip
        copies, drawn = [], []
        for _ in range(200):
            start = time.perf_counter()
            image = np.array(frame, copy=True)
            copies.append(time.perf_counter() - start)
            start = time.perf_counter()
            image = np.array(frame, copy=True)
            draw_results(image, results, [scene], "cam  #41  25 fps  120 ms")
            drawn.append(time.perf_counter() - start)
        rows.append((f"{width}x{height}", statistics.median(copies) * 1000, statistics.median(drawn) * 1000))
    return rows


def encoder_costs() -> list[tuple[str, float]]:
    rows = []
    image = np.full((424, 640, 3), 90, np.uint8)
    for mime in ("video/VP8", "video/H264"):
        codec = RTCRtpCodecParameters(mimeType=mime, clockRate=90000, payloadType=96,
                                      parameters={"packetization-mode": "1", "profile-level-id": "42e01f"}
                                      if mime == "video/H264" else {})  # fmt: skip
        encoder = get_encoder(codec)
        times = []
        for index in range(110):
            picture = image.copy()
            encode_time(picture, index * 40)  # something changes each frame
            frame = av.VideoFrame.from_ndarray(picture, format="bgr24")
            frame.pts, frame.time_base = index * 3600, fractions.Fraction(1, 90000)
            start = time.perf_counter()
            encoder.encode(frame, force_keyframe=index == 0)
            if index >= 10:
                times.append(time.perf_counter() - start)
        rows.append((mime.split("/")[1], statistics.median(times) * 1000))
    return rows


# --- glass to glass ------------------------------------------------------------------------------


def glass_config(with_model: bool) -> dict[str, Any]:
    model = [
        {"name": "detect", "type": "infer", "inputs": ["decode"], "params": {"model": "yolov4-tiny"}},
        {"name": "objects", "type": "yolo", "inputs": ["detect"], "params": {"model": "yolov4-tiny"}},
        {"name": "tracks", "type": "track", "inputs": ["objects"]},
    ]
    stages: list[dict[str, Any]] = [
        {"name": "cameras", "type": "streams"},
        {"name": "decode", "type": "decode", "inputs": ["cameras"], "edge": {"capacity": 4, "policy": "drop_oldest"}},
        *(model if with_model else []),
        {"name": "overlay", "type": "overlay", "inputs": ["tracks" if with_model else "decode"]},
        {"name": "view", "type": "view", "inputs": ["overlay"]},
        {"name": "publish", "type": "publish", "inputs": ["view"]},
    ]
    if with_model:
        stages[2]["edge"] = {"capacity": 2, "policy": "drop_oldest"}
    return {"pipeline": "glass", "api": {"listen": "127.0.0.1:0"}, "runtime": {"threads": 4}, "stages": stages}


async def negotiate(http: aiohttp.ClientSession, url: str, pc: RTCPeerConnection) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp"}
    async with http.post(url, data=pc.localDescription.sdp, headers=headers) as response:
        answer = await response.text()
        if response.status != 201:
            raise RuntimeError(f"{url}: {response.status} {answer}")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        return str(response.headers["Location"])


async def glass_to_glass(with_model: bool, seconds: float) -> tuple[list[float], list[dict[str, float]]]:
    """(glass-to-glass ms per picture the viewer decoded, the results' latency_ms)."""
    config = parse_config(glass_config(with_model), base_dir=Path.cwd())
    apis: list[Any] = []
    runners: list[Any] = []
    task = asyncio.create_task(
        run_pipeline(config, on_api=apis.append, on_started=runners.append, handle_signals=False)
    )
    while not (apis and runners) and not task.done():
        await asyncio.sleep(0.05)
    task.result() if task.done() else None
    base, runner = apis[0].url, runners[0]
    await runner.started.wait()
    totals: list[dict[str, float]] = []
    bus = runner.graph.nodes["publish"].stage.bus

    async def on_result(msg: Any) -> None:
        import json

        totals.append(json.loads(msg.data)["latency_ms"])

    await bus.client.subscribe("streamgraph.glass.cam", cb=on_result)
    publisher, viewer = RTCPeerConnection(), RTCPeerConnection()
    publisher.addTransceiver(TimeCodeCamera(), direction="sendonly")
    viewer.addTransceiver("video", direction="recvonly")
    latencies: list[float] = []
    receiving: list[asyncio.Task[None]] = []

    async def receive(track: Any) -> None:
        while True:
            frame = await track.recv()
            arrived = now_millis()
            picture = frame.to_ndarray(format="bgr24")
            latencies.append((arrived - decode_time(picture)) & 0xFFFFFFFF)

    viewer.on("track", lambda track: receiving.append(asyncio.create_task(receive(track))))
    async with aiohttp.ClientSession() as http:
        await negotiate(http, f"{base}/whip/cam", publisher)
        view = runner.graph.nodes["view"].stage
        while not view.shows("cam"):
            await asyncio.sleep(0.05)
        await negotiate(http, f"{base}/whep/cam", viewer)
        await asyncio.sleep(2.0)  # the encoders' first keyframes and rate control settle
        latencies.clear()
        totals.clear()
        await asyncio.sleep(seconds)
        measured, internal = list(latencies), list(totals)
    for receiver in receiving:
        receiver.cancel()
    await viewer.close()
    await publisher.close()
    runner.request_stop()
    await task
    return measured, internal


async def main_async(args: argparse.Namespace) -> None:
    print(f"# bench/view.py on {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print("\n## overlay: ms per frame (median of 200), 5 boxes + a zone + a line + the status line")
    for size, copy_ms, drawn_ms in overlay_costs():
        print(f"  {size:>9}: copy alone {copy_ms:.2f} ms, copy + drawing {drawn_ms:.2f} ms "
              f"(drawing {drawn_ms - copy_ms:.2f} ms)")  # fmt: skip
    print("\n## WebRTC encoder per viewer: ms per 640x424 frame (median of 100)")
    for codec, ms in encoder_costs():
        print(f"  {codec:>5}: {ms:.2f} ms")
    print(f"\n## glass to glass over WHIP -> pipeline -> WHEP, {args.seconds:.0f} s each, 640x480 at {FPS} frames/s")
    for with_model in (False, True):
        measured, internal = await glass_to_glass(with_model, args.seconds)
        name = "with YOLOv4-tiny" if with_model else "no model (baseline)"
        print(f"  {name:>20}: glass to glass {percentiles(measured)}")
        print(f"  {'':>20}  results' latency_ms.total {percentiles([m['total'] for m in internal])}")
        parts = {key: statistics.median(m.get(key, 0.0) for m in internal) for key in internal[0]} if internal else {}
        print(f"  {'':>20}  its parts, median: " + ", ".join(f"{k} {v:.0f}" for k, v in parts.items() if k != "total"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
