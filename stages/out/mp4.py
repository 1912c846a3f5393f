"""``mp4``: each stream's pictures (``overlay``'s drawing, or the frames as decoded) to MP4
files of ``segment_s`` media seconds, H.264 (libx264) at the frames' own timestamps.

``<path>/<stream>/<stream>-<start, UTC>-<n>.mp4``: a segment is written as ``.mp4.part`` and
renamed when it is complete (its encoder flushed, the container closed), so a file with the
``.mp4`` name always plays; a stream's end and the pipeline's stop close its segment that way.
``max_segments`` / ``max_bytes`` delete a stream's oldest segments beyond them.

Items pass on at once: each stream's frames wait for its encoder in a queue of ``max_pending``,
and one more drops the oldest waiting frame from the recording (counted, logged at the end),
so a slow disk never holds up the results.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from pydantic import Field

from pipeline.media import EndOfStream, Item, VideoFrame
from pipeline.pictures import picture_of
from pipeline.stage import Stage, StageContext, StageParams, register_stage

log = logging.getLogger("streamgraph.mp4")


class Mp4Params(StageParams):
    path: str
    """The folder (relative to the config file); each stream records into a folder of its own."""
    segment_s: float = Field(default=60.0, gt=0)
    """Media seconds per file; a new file starts on the first frame past it."""
    max_segments: int | None = Field(default=None, ge=1)
    """Keep at most this many finished segments per stream (the oldest are deleted)."""
    max_bytes: int | None = Field(default=None, ge=1)
    """Keep a stream's finished segments under this many bytes (the oldest are deleted)."""
    crf: int = Field(default=23, ge=0, le=51)
    preset: str = "veryfast"
    max_pending: int = Field(default=32, ge=1)
    """Frames of a stream waiting for its encoder; more drop the oldest from the recording."""


@dataclass(frozen=True, slots=True)
class _Picture:
    image: np.ndarray
    pts: int
    time_base: Fraction


class Segment:
    """One MP4 file being written: blocking calls, run in the thread pool."""

    def __init__(self, path: Path, first: _Picture, *, crf: int, preset: str) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".part")
        self.first_pts = first.pts
        self.time_base = first.time_base
        height, width = (d - d % 2 for d in first.image.shape[:2])  # yuv420p: even sizes
        self.size = (height, width)
        self.container = av.open(str(self.partial), "w", format="mp4")
        self.stream = self.container.add_stream("libx264")
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.time_base = first.time_base
        self.stream.codec_context.time_base = first.time_base
        self.stream.codec_context.options = {"crf": str(crf), "preset": preset}
        self.frames = 0
        self.last_pts = -1

    def seconds_to(self, picture: _Picture) -> float:
        """Media seconds from this segment's first frame to ``picture``."""
        return float(picture.pts * picture.time_base - self.first_pts * self.time_base)

    def write(self, picture: _Picture) -> None:
        pts = round((picture.pts - self.first_pts) * picture.time_base / self.time_base)
        if pts <= self.last_pts - self.first_pts and self.frames:
            return  # not after the last one (a looped file's restart is still later): MP4 wants order
        height, width = self.size
        image = np.ascontiguousarray(picture.image[:height, :width])
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = pts, self.time_base
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1
        self.last_pts = pts + self.first_pts

    def close(self) -> None:
        """Flush the encoder, finish the file, and give it its name."""
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        self.partial.replace(self.path)


@dataclass
class _Stream:
    folder: Path
    queue: deque[_Picture] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    segment: Segment | None = None
    segments: int = 0
    ending: bool = False
    dropped: int = 0
    started: str = field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))


@register_stage("mp4")
class Mp4(Stage):
    Params = Mp4Params
    params: Mp4Params
    latency_key = None  # nothing waits here: the frames are encoded apart from the results

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self.folder = ctx.resolve_path(self.params.path)
        self.streams: dict[str, _Stream] = {}
        self.written: list[Path] = []

    def wants_pictures(self, stream_id: str) -> bool:
        return True

    async def process(self, item: Item) -> Sequence[Item]:
        frame = item.media
        if isinstance(frame, VideoFrame):
            image = await self.ctx.run_blocking(picture_of, item)
            assert image is not None
            state = self.streams.get(item.stream_id)
            if state is None:
                state = self.streams[item.stream_id] = _Stream(self.folder / item.stream_id)
                state.task = asyncio.create_task(self._encode(item.stream_id, state), name=f"mp4 {item.stream_id}")
            if len(state.queue) >= self.params.max_pending:
                state.queue.popleft()
                state.dropped += 1
            state.queue.append(_Picture(image, frame.pts, frame.time_base))
            state.wake.set()
        return (item,)

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        await self._finish(eos.stream_id)
        return ()

    async def stop(self) -> None:
        for stream_id in list(self.streams):
            await self._finish(stream_id)

    async def _finish(self, stream_id: str) -> None:
        state = self.streams.pop(stream_id, None)
        if state is None:
            return
        state.ending = True
        state.wake.set()
        if state.task is not None:
            await state.task
        if state.dropped:
            log.warning("mp4 %s: %d frame(s) left out of the recording (the encoder fell behind)", stream_id,
                        state.dropped)  # fmt: skip

    async def _encode(self, stream_id: str, state: _Stream) -> None:
        try:
            while True:
                if not state.queue:
                    if state.ending:
                        break
                    state.wake.clear()
                    await state.wake.wait()
                    continue
                picture = state.queue.popleft()
                await self.ctx.run_blocking(self._write, stream_id, state, picture)
        except Exception:
            log.exception("mp4 %s: writing failed; the stream goes on without a recording", stream_id)
        finally:
            if state.segment is not None:
                segment, state.segment = state.segment, None
                with contextlib.suppress(Exception):
                    await self.ctx.run_blocking(self._close, state, segment)

    def _write(self, stream_id: str, state: _Stream, picture: _Picture) -> None:
        segment = state.segment
        if (
            segment is not None
            and float((picture.pts - segment.first_pts) * picture.time_base) >= self.params.segment_s
        ):
            self._close(state, segment)
            segment = state.segment = None
        if segment is None:
            state.folder.mkdir(parents=True, exist_ok=True)
            state.segments += 1
            path = state.folder / f"{stream_id}-{state.started}-{state.segments:05d}.mp4"
            segment = state.segment = Segment(path, picture, crf=self.params.crf, preset=self.params.preset)
        segment.write(picture)

    def _close(self, state: _Stream, segment: Segment) -> None:
        segment.close()
        self.written.append(segment.path)
        self._rotate(state.folder)

    def _rotate(self, folder: Path) -> None:
        done = sorted(folder.glob("*.mp4"))  # by name: the run's start time, then the segment's number
        if self.params.max_segments is not None:
            while len(done) > self.params.max_segments:
                done.pop(0).unlink(missing_ok=True)
        if self.params.max_bytes is not None:
            sizes = [p.stat().st_size for p in done]
            while done and sum(sizes) > self.params.max_bytes and len(done) > 1:
                done.pop(0).unlink(missing_ok=True)
                sizes.pop(0)
