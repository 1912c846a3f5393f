"""The ``file`` source: anything FFmpeg opens, read at the file's own pace or as fast as possible.

It demuxes the tracks asked for (``tracks: [video, audio]``), interleaved as the file stores them;
each packet keeps its own track's time base and says which track it is (``EncodedPacket.kind``).

A file that does not exist is a config error (``check``: ``validate``, or a refused ``POST
/streams``); one that goes away after that, or cannot be read, ends its stream with the error; so
does one that lacks a track ``tracks`` asks for (the default, ``[video]``, asks for video only).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
from pydantic import Field

from pipeline.config import STREAM_ID_PATTERN, stream_id_from
from pipeline.errors import ConfigError
from pipeline.media import (
    AudioCodecParams,
    EncodedPacket,
    EndOfStream,
    Item,
    Message,
    StreamInfo,
    StreamStarted,
    TrackKind,
    VideoCodecParams,
)
from pipeline.stage import Source, TrackSelection, register_stage

from .errors import media_error

Emit = Callable[[Message], Awaitable[None]]


_PROTOCOL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
"""``scheme://...``: a URL (an FFmpeg protocol), not a path on this machine. One letter before
``:`` is a Windows drive."""


def _shown(path: Path) -> str:
    """A path for a message, cut if it is absurdly long (a request may hold anything)."""
    text = str(path)
    return text if len(text) <= 300 else f"{text[:297]}..."


class FileParams(TrackSelection):
    path: str
    """Media file; relative paths are relative to the pipeline YAML."""
    id: str | None = Field(default=None, pattern=STREAM_ID_PATTERN)
    """Stream id; defaults to the file name without its extension (each character a stream id
    cannot hold made ``_``)."""
    loop: bool = False
    """Start again at the end, forever, with timestamps that keep increasing."""
    rate: Literal["native", "max"] = "max"
    """``native`` paces packets by their timestamps, like a live camera; ``max`` reads flat out."""


class _Demuxer:
    """A blocking packet reader for one file's first video and/or audio track (runs in the thread pool)."""

    def __init__(self, path: Path, tracks: Sequence[TrackKind]) -> None:
        self.path = path
        if path.is_file() and path.stat().st_size == 0:
            raise ValueError("the file is empty (0 bytes)")
        self.container: Any = av.open(str(path), mode="r")
        self.streams: dict[TrackKind, Any] = {}
        for kind in tracks:
            found = self.container.streams.video if kind == "video" else self.container.streams.audio
            if found:
                self.streams[kind] = found[0]
        missing = [kind for kind in tracks if kind not in self.streams]
        if missing:
            # Every track asked for must be there: a stream that plays only part of what was asked
            # (an audio-only file fed to a video pipeline) would run without a single result.
            self.container.close()
            raise ValueError(f"has no {' or '.join(missing)} stream (tracks: [{', '.join(tracks)}])")
        for kind, stream in self.streams.items():
            if stream.codec_context is None:  # a codec tag no FFmpeg codec claims
                self.container.close()
                tag = getattr(stream, "codec_tag", "") or "?"
                raise ValueError(f"its {kind} track is in a codec FFmpeg does not know (tag {tag!r})")
        self.kinds: dict[int, TrackKind] = {stream.index: kind for kind, stream in self.streams.items()}
        self.time_bases: dict[TrackKind, Fraction] = {
            kind: stream.time_base or Fraction(1, 90000) for kind, stream in self.streams.items()
        }
        self.frame_durations: dict[TrackKind, int] = {
            kind: _frame_duration(stream, self.time_bases[kind]) for kind, stream in self.streams.items()
        }
        """Ticks of one frame, from the header's rate: the step for packets that carry no timestamps."""
        self.video: VideoCodecParams | None = None
        self.audio: AudioCodecParams | None = None
        if "video" in self.streams:
            codec = self.streams["video"].codec_context
            self.video = VideoCodecParams(codec.name, codec.width, codec.height, codec.extradata)
        if "audio" in self.streams:
            codec = self.streams["audio"].codec_context
            self.audio = AudioCodecParams(codec.name, codec.sample_rate, codec.channels, codec.extradata)
        counts = {kind: int(stream.frames or 0) for kind, stream in self.streams.items()}
        self.video_frames: int = counts.get("video", 0)
        self.expected_packets: int = sum(counts.values()) if all(counts.values()) else 0
        """Packets the file says it holds over the demuxed tracks; 0 if any track does not say."""
        self._packets: Iterator[Any] = self.container.demux(list(self.streams.values()))

    def next_packet(self) -> tuple[TrackKind, Any] | None:
        for packet in self._packets:
            if packet.size:  # the demuxer's final empty packet only means "flush"
                return self.kinds[packet.stream.index], packet
        return None

    def rewind(self) -> None:
        # Reopened rather than seeked: a seek lands on the first keyframe at or after 0 for some
        # tracks, skipping an AAC track's priming packet (pts < 0) that the first pass had.
        self.container.close()
        self.container = av.open(str(self.path), mode="r")
        reopened = list(self.container.streams)
        self.streams = {kind: reopened[index] for index, kind in self.kinds.items()}
        self._packets = self.container.demux(list(self.streams.values()))

    def close(self) -> None:
        self.container.close()


def _frame_duration(stream: Any, time_base: Fraction) -> int:
    """Ticks of one frame (video: 1 / the header's frame rate, 25 fps if it says none; audio: one
    packet is not one frame, so 0 and its own ``duration`` counts)."""
    if stream.type != "video":
        return 0
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    return max(1, round(1 / (Fraction(rate) * time_base)))


class _Schedule:
    """Where each packet of a file stream lands in media time, and when it is due at native rate.

    Each track keeps its own time base; a loop shifts every track by the same duration, each
    expressed in its own ticks, so timestamps keep increasing and tracks stay in sync. Pacing starts
    at the first packet's time, from when the schedule was made.
    """

    def __init__(self, time_bases: dict[TrackKind, Fraction], frame_durations: dict[TrackKind, int]) -> None:
        self._time_bases = time_bases
        self._frame_durations = frame_durations
        self._next_pts: dict[TrackKind, int] = dict.fromkeys(time_bases, 0)
        """Per track, where the next packet starts if it carries no timestamp of its own."""
        self._offsets: dict[TrackKind, int] = dict.fromkeys(time_bases, 0)
        self._last_end: dict[TrackKind, Fraction] = {}  # seconds, shifted
        self._origin: Fraction | None = None  # the first packet's time: pacing starts there
        self._started_wall = time.monotonic()
        self._started_epoch = time.time()

    def next_pass(self) -> None:
        """The file starts again: shift what follows past the end of everything passed on."""
        end = max(self._last_end.values())
        self._offsets = {kind: round(end / tb) for kind, tb in self._time_bases.items()}
        self._next_pts = dict.fromkeys(self._time_bases, 0)

    def place(self, kind: TrackKind, packet: Any) -> tuple[int, Fraction]:
        """The packet's shifted pts (the packet itself is shifted), and its time since the origin."""
        time_base = self._time_bases[kind]
        offset = self._offsets[kind]
        if packet.pts is None and packet.dts is None:
            # A raw elementary stream (.h264, .hevc) has no timestamps: one frame after the last,
            # at the header's rate, so it paces and its results have a media time.
            packet.pts = packet.dts = self._next_pts[kind]
            packet.duration = packet.duration or self._frame_durations[kind]
        unshifted = packet.pts if packet.pts is not None else packet.dts
        self._next_pts[kind] = unshifted + (packet.duration or self._frame_durations[kind])
        pts = unshifted + offset
        if offset:  # the decoder passes pts through: shift the packet itself
            packet.pts = pts
            packet.dts = packet.dts + offset if packet.dts is not None else None
        at = pts * time_base
        if self._origin is None:
            self._origin = at
        self._last_end[kind] = max(self._last_end.get(kind, at), (pts + (packet.duration or 0)) * time_base)
        return pts, at - self._origin

    def due(self, since_origin: Fraction) -> float:
        """When (monotonic) a packet this far from the origin is due at native rate."""
        return self._started_wall + float(since_origin)

    def captured(self, since_origin: Fraction) -> float:
        """At native rate a packet was "captured" when its schedule says, not when it was read: a
        source that falls behind (a full edge) shows the lag as latency instead of hiding it."""
        return self._started_epoch + float(since_origin)


@register_stage("file")
class FileSource(Source):
    Params = FileParams
    params: FileParams
    uri_schemes = ("", "file")

    @classmethod
    def params_for_uri(cls, stream_id: str, uri: str, options: dict[str, Any]) -> dict[str, Any]:
        return {**options, "path": uri.removeprefix("file://"), "id": stream_id}

    def __init__(self, name: str, params: FileParams) -> None:
        super().__init__(name, params)
        self._stopped_streams: dict[str, str] = {}

    @property
    def stream_id(self) -> str:
        return self.params.id or stream_id_from(Path(self.params.path).stem, "file")

    def check(self, base_dir: Path) -> None:
        given = self.params.path
        if _PROTOCOL.match(given):
            return  # a URL FFmpeg opens itself: nothing to look for here
        path = Path(given).expanduser()
        resolved = path if path.is_absolute() else base_dir / path
        where = "" if path.is_absolute() else f" (a relative path is read from the config's directory, {base_dir})"
        try:
            exists, is_dir = resolved.exists(), resolved.is_dir()
        except OSError as exc:  # a name too long for the file system, say
            raise ConfigError("params.path", f"cannot look for {_shown(resolved)}: {media_error(exc)}") from None
        if not exists:
            raise ConfigError("params.path", f"no such file: {_shown(resolved)}{where}")
        if is_dir:
            raise ConfigError("params.path", f"{_shown(resolved)} is a directory, not a media file")

    def stop_stream(self, stream_id: str, reason: str) -> None:
        self._stopped_streams[stream_id] = reason

    async def run(self, emit: Emit) -> None:
        stream_id = self.stream_id
        path = self.ctx.resolve_path(self.params.path)
        try:
            demuxer = await self.ctx.run_blocking(_Demuxer, path, self.params.tracks)
        except (OSError, av.FFmpegError, ValueError) as exc:
            # Announce the stream even so: subscribers see it start, fail with the reason, and end.
            await emit(StreamStarted(StreamInfo(stream_id=stream_id, uri=str(path), live=False)))
            await self._fail(emit, stream_id, f"cannot open {path}: {media_error(exc)}")
            return
        try:
            await self._play(emit, stream_id, path, demuxer)
        finally:
            await self.ctx.run_blocking(demuxer.close)

    async def _play(self, emit: Emit, stream_id: str, path: Path, demuxer: _Demuxer) -> None:
        """Announce the stream, pass its packets on (paced and looped as asked), then end it."""
        await self._announce(emit, stream_id, path, demuxer)
        read = await self._pass_packets(emit, stream_id, path, demuxer)
        if read is not None:
            await self._end(emit, stream_id, path, demuxer, read)

    async def _announce(self, emit: Emit, stream_id: str, path: Path, demuxer: _Demuxer) -> None:
        rate = demuxer.streams["video"].average_rate if "video" in demuxer.streams else None
        info = StreamInfo(
            stream_id=stream_id,
            uri=str(path),
            # Paced like a camera, it is treated like one: a slow graph drops frames instead of lagging.
            live=self.params.rate == "native",
            video=demuxer.video,
            frame_rate=Fraction(rate) if rate else None,
            frame_count=None if self.params.loop else demuxer.video_frames or None,
            audio=demuxer.audio,
        )
        # The progress total counts published frames: only meaningful when every packet is a frame.
        self.ctx.stats.stream(stream_id).frame_count = info.frame_count if demuxer.audio is None else None
        await emit(StreamStarted(info))

    async def _pass_packets(self, emit: Emit, stream_id: str, path: Path, demuxer: _Demuxer) -> int | None:
        """Read, pace and emit packets until the file ends (for good, without ``loop``) or a stop:
        how many were read, or None if the stream has ended with an error."""
        schedule = _Schedule(demuxer.time_bases, demuxer.frame_durations)
        read = 0
        while not self._stop_asked(stream_id):
            try:
                demuxed = await self.ctx.run_blocking(demuxer.next_packet)
            except av.FFmpegError as exc:
                await self._fail(emit, stream_id, f"{path}: unreadable after {read} packets: {media_error(exc)}")
                return None
            if demuxed is None:
                if read == 0:
                    await self._fail(emit, stream_id, f"{path}: no {' or '.join(demuxer.streams)} packets")
                    return None
                if not self.params.loop:
                    break
                if not await self._start_again(emit, stream_id, path, demuxer, schedule):
                    return None
                continue
            kind, packet = demuxed
            pts, since_origin = schedule.place(kind, packet)
            if self.params.rate == "native" and await self._sleep_until(schedule.due(since_origin)):
                break
            read += 1
            media = EncodedPacket(packet, pts, demuxer.time_bases[kind], bool(packet.is_keyframe), kind)
            captured = schedule.captured(since_origin) if self.params.rate == "native" else time.time()
            await emit(Item(stream_id=stream_id, media=media, capture_time=captured))
        return read

    async def _start_again(
        self, emit: Emit, stream_id: str, path: Path, demuxer: _Demuxer, schedule: _Schedule
    ) -> bool:
        """Loop: rewind the file, its timestamps shifted past the last pass; False if it could not."""
        schedule.next_pass()
        try:
            await self.ctx.run_blocking(demuxer.rewind)
        except (OSError, av.FFmpegError) as exc:
            await self._fail(emit, stream_id, f"{path}: cannot start it again: {media_error(exc)}")
            return False
        return True

    async def _end(self, emit: Emit, stream_id: str, path: Path, demuxer: _Demuxer, read: int) -> None:
        """End the stream after ``read`` packets: stopped, an error if the file holds fewer packets
        than it says, or at its end."""
        if self._stop_asked(stream_id):
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

    def _stop_asked(self, stream_id: str) -> bool:
        return self.stopping.is_set() or stream_id in self._stopped_streams

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
