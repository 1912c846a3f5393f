"""The ``file`` source: anything FFmpeg opens, read at the file's own pace or as fast as possible."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
from pydantic import Field

from pipeline.media import EncodedPacket, EndOfStream, Item, Message, StreamInfo, StreamStarted, VideoCodecParams
from pipeline.stage import Source, StageParams, register_stage

Emit = Callable[[Message], Awaitable[None]]


class FileParams(StageParams):
    path: str
    """Media file; relative paths are relative to the pipeline YAML."""
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    """Stream id; defaults to the file name without its extension."""
    loop: bool = False
    """Start again at the end, forever, with timestamps that keep increasing."""
    rate: Literal["native", "max"] = "max"
    """``native`` paces packets by their timestamps, like a live camera; ``max`` reads flat out."""


class _Demuxer:
    """A blocking packet reader for one file's first video stream (runs in the thread pool)."""

    def __init__(self, path: Path) -> None:
        self.container: Any = av.open(str(path), mode="r")
        video = self.container.streams.video
        if not video:
            self.container.close()
            raise ValueError("has no video stream")
        self.stream = video[0]
        self.time_base: Fraction = self.stream.time_base or Fraction(1, 90000)
        codec = self.stream.codec_context
        self.params = VideoCodecParams(codec.name, codec.width, codec.height, codec.extradata)
        self.expected_packets: int = int(self.stream.frames or 0)
        self._packets: Iterator[Any] = self.container.demux(self.stream)

    def next_packet(self) -> Any | None:
        for packet in self._packets:
            if packet.size:  # the demuxer's final empty packet only means "flush"
                return packet
        return None

    def rewind(self) -> None:
        self.container.seek(0, stream=self.stream)
        self._packets = self.container.demux(self.stream)

    def close(self) -> None:
        self.container.close()


@register_stage("file")
class FileSource(Source):
    Params = FileParams
    params: FileParams

    def __init__(self, name: str, params: FileParams) -> None:
        super().__init__(name, params)
        self._stopped_streams: dict[str, str] = {}

    @property
    def stream_id(self) -> str:
        return self.params.id or Path(self.params.path).stem

    def stop_stream(self, stream_id: str, reason: str) -> None:
        self._stopped_streams[stream_id] = reason

    async def run(self, emit: Emit) -> None:
        stream_id = self.stream_id
        path = self.ctx.resolve_path(self.params.path)
        try:
            demuxer = await self.ctx.run_blocking(_Demuxer, path)
        except (OSError, av.FFmpegError, ValueError) as exc:
            # Announce the stream even so: subscribers see it start, fail with the reason, and end.
            await emit(StreamStarted(StreamInfo(stream_id=stream_id, uri=str(path), live=False)))
            await self._fail(emit, stream_id, f"cannot open {path}: {_reason(exc)}")
            return
        try:
            await self._play(emit, stream_id, path, demuxer)
        finally:
            await self.ctx.run_blocking(demuxer.close)

    async def _play(self, emit: Emit, stream_id: str, path: Path, demuxer: _Demuxer) -> None:
        rate = demuxer.stream.average_rate
        info = StreamInfo(
            stream_id=stream_id,
            uri=str(path),
            live=False,
            video=demuxer.params,
            frame_rate=Fraction(rate) if rate else None,
            frame_count=None if self.params.loop else demuxer.expected_packets or None,
        )
        self.ctx.stats.stream(stream_id).frame_count = info.frame_count
        await emit(StreamStarted(info))
        offset = 0  # pts added on each loop so timestamps keep increasing
        first_pts: int | None = None
        last_end = 0
        started_wall = time.monotonic()
        read = 0
        while not self.stopping.is_set() and stream_id not in self._stopped_streams:
            try:
                packet = await self.ctx.run_blocking(demuxer.next_packet)
            except av.FFmpegError as exc:
                await self._fail(emit, stream_id, f"{path}: unreadable after {read} packets: {_reason(exc)}")
                return
            if packet is None:
                if read == 0:
                    await self._fail(emit, stream_id, f"{path}: no video packets")
                    return
                if not self.params.loop:
                    break
                offset = last_end
                await self.ctx.run_blocking(demuxer.rewind)
                continue
            pts = (packet.pts if packet.pts is not None else packet.dts or 0) + offset
            if offset:  # the decoder passes pts through: shift the packet itself
                packet.pts = pts
                packet.dts = packet.dts + offset if packet.dts is not None else None
            if first_pts is None:
                first_pts = pts
            last_end = max(last_end, pts + (packet.duration or 0))
            if self.params.rate == "native":
                due = started_wall + float((pts - first_pts) * demuxer.time_base)
                if await self._sleep_until(due):
                    break
            read += 1
            media = EncodedPacket(packet, pts, demuxer.time_base, bool(packet.is_keyframe))
            await emit(Item(stream_id=stream_id, media=media, capture_time=time.time()))
        if stream_id in self._stopped_streams or self.stopping.is_set():
            # A source ends every stream it started, even one a stage failed (that stage has
            # sent its error downstream already and swallows this end).
            await emit(EndOfStream(stream_id, "stopped"))
            return
        if not self.params.loop and demuxer.expected_packets and read < demuxer.expected_packets:
            await self._fail(
                emit,
                stream_id,
                f"{path}: file ends early: read {read} of {demuxer.expected_packets} packets (truncated?)",
            )
            return
        await emit(EndOfStream(stream_id, "eof"))

    async def _sleep_until(self, due: float) -> bool:
        """Wait until ``due`` (monotonic); True if a stop was asked meanwhile."""
        delay = due - time.monotonic()
        if delay <= 0:
            return self.stopping.is_set()
        try:
            await asyncio.wait_for(self.stopping.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True

    async def _fail(self, emit: Emit, stream_id: str, message: str) -> None:
        self.ctx.logger.error("stream %s: %s", stream_id, message)
        self.ctx.stats.stream(stream_id).error = message
        await emit(EndOfStream(stream_id, "error", message))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, av.FFmpegError):
        return exc.strerror or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
