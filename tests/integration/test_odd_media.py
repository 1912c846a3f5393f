"""Odd media through a live service, each as its own stream next to a healthy one.

One pipeline runs in this process (a ``streams`` source, decode, prepare, publish; a real
nats-server; the HTTP API) with a healthy stream: the sample looped at native rate. Each odd input,
generated here with PyAV, is added through ``POST /streams`` and must end with a clear event on
NATS: an ``error`` whose message names the file and the problem, or, for media that is only
unusual, ``ended`` at its end of file with every frame published. After each one the healthy
stream's seq must keep advancing and the service must still answer; when the service stops, the
healthy stream's results have no gap and no drop. Every wait is a hang guard, never a timing
assertion.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np

from pipeline.config import parse_config
from pipeline.stage import StageContext
from stages.ingest.file import FileParams, FileSource
from tests.fakes import EmitRecorder

from .support import Recorder, Running, running_pipeline, until

PIPELINE = "odd-media"
HEALTHY = "healthy"
VFR_PTS_MS = (0, 40, 50, 60, 200, 210, 400, 440, 441, 700, 720, 1000)
"""Frame times of the variable-frame-rate file: gaps of 1 to 300 ms."""


# --- the odd media, made with PyAV ----------------------------------------------------------------


def _picture(width: int, height: int, index: int) -> av.VideoFrame:
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = (index * 37) % 256
    image[: height // 2, : width // 2, 1] = 200  # some structure for the encoder
    return av.VideoFrame.from_ndarray(image, format="bgr24")


def _encoder_options(codec: str) -> dict[str, str]:
    if codec == "libx264":
        return {"preset": "ultrafast", "bf": "0"}
    if codec == "libx265":
        return {"preset": "ultrafast", "x265-params": "log-level=error"}
    return {}


def write_video(
    path: Path,
    *,
    codec: str = "libx264",
    size: tuple[int, int] = (64, 48),
    frames: int = 10,
    pts: tuple[int, ...] | None = None,
    time_base: Fraction = Fraction(1, 25),
    container_format: str | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """``frames`` pictures of ``size`` in ``codec``; frame i at ``pts[i]`` (default i) in ``time_base``."""
    with av.open(str(path), "w", format=container_format, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=25)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        stream.options = dict(_encoder_options(codec))
        for index in range(frames):
            picture = _picture(*size, index)
            picture.pts = pts[index] if pts is not None else index
            picture.time_base = time_base
            container.mux(stream.encode(picture))
        container.mux(stream.encode(None))
    return path


def write_resolution_change(path: Path, sizes: tuple[tuple[int, int], ...], frames_each: int) -> Path:
    """One H.264 track in MPEG-TS whose pictures change size mid-stream: each part is a new
    encoder (new SPS), muxed as one track, as a camera that changes its resolution sends it."""
    time_base = Fraction(1, 25)
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=25)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = sizes[0]
        stream.pix_fmt = "yuv420p"
        index = 0
        for width, height in sizes:
            encoder = av.CodecContext.create("libx264", "w")
            encoder.width, encoder.height = width, height
            encoder.pix_fmt = "yuv420p"
            encoder.time_base = time_base
            encoder.options = _encoder_options("libx264")
            pictures = []
            for _ in range(frames_each):
                picture = _picture(width, height, index)
                picture.pts, picture.time_base = index, time_base
                pictures.append(picture)
                index += 1
            for packet in [p for picture in [*pictures, None] for p in encoder.encode(picture)]:
                packet.stream, packet.time_base = stream, time_base
                container.mux(packet)
    return path


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(10):
            chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 16000, index * 1024
            container.mux(stream.encode(chunk))
        container.mux(stream.encode(None))
    return path


def truncated(source: Path, path: Path) -> Path:
    """The first half of ``source``'s bytes."""
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def garbled(source: Path, path: Path) -> Path:
    """``source`` (an MP4 with its index first) with every byte of its media data replaced by noise:
    the container opens, no packet decodes."""
    data = bytearray(source.read_bytes())
    start = data.index(b"mdat") + 4
    noise = random.Random(14)
    data[start:] = bytes(noise.randrange(256) for _ in range(len(data) - start))
    path.write_bytes(bytes(data))
    return path


def h264_index_first(path: Path) -> Path:
    """30 frames of H.264 in an MP4 whose index (moov) comes first: a cut keeps it readable."""
    return write_video(path, frames=30, container_format="mp4", container_options={"movflags": "faststart"})


# --- what each must do ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Odd:
    """One odd input: its stream id, how to make it in a folder, and the end it must come to."""

    stream_id: str
    make: Callable[[Path], Path]
    error: tuple[str, ...] = ()
    """Words the ``error`` event's message must hold; () for media that plays to its end."""
    names_file: bool = True
    """Whether that message names the file: the source's do; the decoder's names the problem
    only (the event itself names the stream)."""
    frames: int = 0
    """For media that plays: frames it holds, each of which must be published."""
    sizes: tuple[tuple[int, int], ...] = ()
    """For media that plays: the frame sizes of its results, in order of first appearance."""
    pts: tuple[int, ...] | None = None
    """For media that plays: the results' pts, when the file fixes them (VFR)."""


def unknown_codec(folder: Path) -> Path:
    """An AVI whose video FourCC no FFmpeg codec claims."""
    avi = write_video(folder / "divx-for-unknown.avi", codec="mpeg4")
    unknown = folder / "unknown.avi"
    unknown.write_bytes(avi.read_bytes().replace(b"FMP4", b"ZZZZ"))
    return unknown


ODD_MEDIA = (
    Odd("empty", lambda d: _touch(d / "empty.mp4"), error=("cannot open", "the file is empty (0 bytes)")),
    Odd("unknown-codec", lambda d: unknown_codec(d), error=("cannot open", "codec FFmpeg does not know")),
    Odd("random-bytes", lambda d: _noise(d / "noise.mp4"), error=("cannot open", "Invalid data")),
    Odd(
        "truncated",
        lambda d: truncated(h264_index_first(d / "whole.mp4"), d / "truncated.mp4"),
        error=("file ends early", "of 30 packets", "truncated"),
    ),
    Odd(
        "truncated-index-last",
        lambda d: truncated(write_video(d / "whole-late-index.mp4", frames=30), d / "truncated-index-last.mp4"),
        error=("cannot open", "Invalid data"),
    ),
    Odd(
        "garbled",
        lambda d: garbled(h264_index_first(d / "clean.mp4"), d / "garbled.mp4"),
        error=("corrupt video", "packets in a row failed to decode (Invalid data found when processing input)"),
        names_file=False,
    ),
    Odd("audio-only", lambda d: write_audio_only(d / "speech.m4a"), error=("cannot open", "has no video stream")),
    Odd(
        "resolution-change",
        lambda d: write_resolution_change(d / "resize.ts", ((64, 48), (96, 64)), 10),
        frames=20,
        sizes=((64, 48), (96, 64)),
    ),
    Odd(
        "vfr",
        lambda d: write_video(d / "vfr.mkv", frames=len(VFR_PTS_MS), pts=VFR_PTS_MS, time_base=Fraction(1, 1000)),
        frames=len(VFR_PTS_MS),
        sizes=((64, 48),),
        pts=VFR_PTS_MS,
    ),
    Odd("tiny-16x16", lambda d: write_video(d / "tiny.mp4", size=(16, 16)), frames=10, sizes=((16, 16),)),
    Odd("frame-4k", lambda d: write_video(d / "4k.mp4", size=(3840, 2160), frames=1), frames=1, sizes=((3840, 2160),)),
    Odd(
        "hevc",
        lambda d: write_video(d / "hevc.mp4", codec="libx265", size=(128, 96)),
        frames=10,
        sizes=((128, 96),),
    ),
    Odd(
        "hevc-raw",  # an elementary stream: no container, no timestamps
        lambda d: write_video(d / "clip.hevc", codec="libx265", size=(128, 96), container_format="hevc"),
        frames=10,
        sizes=((128, 96),),
    ),
    Odd("mpeg4-part2", lambda d: write_video(d / "divx.avi", codec="mpeg4"), frames=10, sizes=((64, 48),)),
)


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _noise(path: Path) -> Path:
    path.write_bytes(random.Random(14).randbytes(64 * 1024))
    return path


# --- the service ----------------------------------------------------------------------------------


def _config(sample: Path, base_dir: Path) -> Any:
    """A cheap pipeline that still touches every frame's pixels (prepare converts and resizes)."""
    return parse_config(
        {
            "pipeline": PIPELINE,
            "api": {"listen": "127.0.0.1:0"},
            "stages": [
                {
                    "name": "cameras",
                    "type": "streams",
                    "params": {
                        "streams": [{"id": HEALTHY, "uri": str(sample), "options": {"rate": "native", "loop": True}}]
                    },
                },
                {"name": "decode", "type": "decode", "inputs": ["cameras"]},
                {"name": "prep", "type": "prepare", "inputs": ["decode"], "params": {"model": "pp-ocrv4-det"}},
                {"name": "publish", "type": "publish", "inputs": ["prep"]},
            ],
        },
        base_dir=base_dir,
    )


async def _still_serving(http: aiohttp.ClientSession, running: Running) -> None:
    running.check_alive()
    async with http.get(f"{running.url}/healthz") as response:
        assert response.status == 200
    async with http.get(f"{running.url}/streams") as response:
        listed = {s["id"]: s["state"] for s in (await response.json())["streams"]}
    assert listed.get(HEALTHY) == "running", listed


async def _healthy_goes_on(healthy: list[dict[str, Any]], after: str) -> None:
    last_seq = healthy[-1]["seq"]
    await until(lambda: healthy[-1]["seq"] > last_seq, f"healthy results after {after}")


def _check_end(odd: Odd, path: Path, events: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
    names = [e["event"] for e in events]
    ended = events[-1]
    assert ended["frames"]["published"] == len(results), odd.stream_id
    assert [m["seq"] for m in results] == list(range(len(results))), f"{odd.stream_id}: a seq gap"
    if odd.error:
        # A file that cannot be opened never started: it fails alone.
        never_started = "cannot open" in odd.error
        expected = ["error", "ended"] if never_started else ["started", "error", "ended"]
        assert names == expected, (odd.stream_id, events)
        message = events[-2]["message"]
        assert all(word in message for word in odd.error), (odd.stream_id, message)
        assert str(path) in message or not odd.names_file, (odd.stream_id, message)
        assert ended["reason"] == "error"
        return
    assert names == ["started", "ended"], (odd.stream_id, events)
    assert ended["reason"] == "eof"
    assert ended["frames"] == {"decoded": odd.frames, "published": odd.frames, "dropped": 0}, odd.stream_id
    sizes = [(m["frame"]["width"], m["frame"]["height"]) for m in results]
    assert tuple(dict.fromkeys(sizes)) == odd.sizes, (odd.stream_id, sizes)
    if odd.pts is not None:
        assert tuple(m["pts"] for m in results) == odd.pts, odd.stream_id


async def test_odd_media_end_clearly_while_a_healthy_stream_goes_on(
    nats_server: Any, sample_video: Path, tmp_path: Path
) -> None:
    files = {odd.stream_id: odd.make(tmp_path) for odd in ODD_MEDIA}
    async with (
        Recorder(nats_server.url, PIPELINE) as recorder,
        running_pipeline(nats_server.url, _config(sample_video, tmp_path)) as running,
        aiohttp.ClientSession() as http,
    ):
        results, events = recorder.recording.results, recorder.recording.events
        await until(lambda: bool(results.get(HEALTHY)), "results for the healthy stream")
        for odd in ODD_MEDIA:
            body = {"id": odd.stream_id, "uri": str(files[odd.stream_id]), "options": {"rate": "native"}}
            async with http.post(f"{running.url}/streams", json=body) as response:
                assert response.status == 201, (odd.stream_id, await response.text())
            await until(recorder.ended(odd.stream_id).is_set, f"end of {odd.stream_id}")
            _check_end(odd, files[odd.stream_id], events[odd.stream_id], results.get(odd.stream_id, []))
            # The healthy stream goes on after each: a later frame of it reaches the subscriber.
            await _healthy_goes_on(results[HEALTHY], after=odd.stream_id)
            await _still_serving(http, running)
    assert running.summary is not None and running.summary.interrupted
    healthy = results[HEALTHY]
    assert [m["seq"] for m in healthy] == list(range(len(healthy))), "the healthy stream has a seq gap"
    assert all(m["drops"]["total"] == 0 for m in healthy)
    assert events[HEALTHY][-1]["event"] == "ended" and events[HEALTHY][-1]["reason"] == "stopped"


# --- odd media the file source does not handle yet (stages/ingest, see issue 14) -------------------


async def _play(path: Path, ctx: StageContext) -> EmitRecorder:
    """The file through a ``file`` source alone, as fast as it reads; what it emitted."""
    source = FileSource("file", FileParams(path=str(path), id="odd"))
    await source.start(ctx)
    emit = EmitRecorder()
    await source.run(emit)
    return emit


async def test_a_video_codec_ffmpeg_does_not_know_ends_with_an_error_naming_it(
    make_ctx: Callable[..., StageContext], tmp_path: Path
) -> None:
    emit = await _play(unknown_codec(tmp_path), make_ctx("file"))
    assert [end.reason for end in emit.ends] == ["error"]
    assert "codec" in (emit.ends[0].error or "")


async def test_an_elementary_stream_gets_increasing_timestamps(
    make_ctx: Callable[..., StageContext], tmp_path: Path
) -> None:
    raw = write_video(tmp_path / "clip.hevc", codec="libx265", size=(128, 96), container_format="hevc")
    emit = await _play(raw, make_ctx("file"))
    pts = [packet.pts for packet in emit.packets if packet.pts is not None]  # each of the 10 has one
    assert len(pts) == 10 and all(a < b for a, b in itertools.pairwise(pts)), pts


async def test_a_raw_h264_stream_at_native_rate_is_paced_by_its_header_rate(
    make_ctx: Callable[..., StageContext], tmp_path: Path
) -> None:
    """The issue's case: a raw .h264 has no timestamps (every pts was 0) and played 60 frames in
    0.18 s at ``rate: native``. Each packet now lands one frame (1/25 s, the header's rate) after
    the last, and is read no earlier than that: the play takes at least the clip's length."""
    frames = 20
    raw = write_video(tmp_path / "clip.h264", frames=frames, container_format="h264")
    source = FileSource("file", FileParams(path=str(raw), id="raw", rate="native"))
    await source.start(make_ctx("file"))
    emit = EmitRecorder()
    started = time.monotonic()
    await source.run(emit)
    took = time.monotonic() - started
    packets = emit.packets
    assert len(packets) == frames
    times = [packet.pts * packet.time_base for packet in packets]
    assert [b - a for a, b in itertools.pairwise(times)] == [Fraction(1, 25)] * (frames - 1), times
    captured = [item.capture_time for item in emit.items]
    assert all(abs((b - a) - 0.04) < 1e-6 for a, b in itertools.pairwise(captured)), captured
    # A lower bound only (a slow machine takes longer, never shorter): paced, not read flat out.
    assert took >= (frames - 1) / 25, f"{frames} frames at 25 fps played in {took:.2f} s"
