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
from collections.abc import Awaitable, Callable
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
from pydantic import Field

from pipeline.config import STREAM_ID_PATTERN, stream_id_from
from pipeline.errors import ConfigError
from pipeline.media import (
    EncodedPacket,
    EndOfStream,
    Item,
    Message,
    StreamInfo,
    StreamStarted,
    TrackKind,
)
from pipeline.sourcethread import SourceStuck, SourceThread
from pipeline.stage import Source, TrackSelection, register_stage

from .demuxer import Demuxer
from .errors import media_error
from .schedule import Schedule, first_pass_ends

Emit = Callable[[Message], Awaitable[None]]


_PROTOCOL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
"""``scheme://...``: a URL (an FFmpeg protocol), not a path on this machine. One letter before
``:`` is a Windows drive."""


def _close_late(demuxer: Demuxer | None) -> None:
    """An open abandoned as stuck that succeeded after all: close what it opened."""
    if demuxer is not None:
        demuxer.close()


SCAN_TIMEOUT_S = 120.0
"""How long reading a looped file through once may take (``start_s`` past its first pass: where
each pass begins is measured, without decoding)."""


CLOSE_TIMEOUT_S = 5.0
"""Closing a file that does not close in this long leaves it to its abandoned thread."""


def _fifo_hint(path: Path) -> str:
    """What to add to a FIFO's name in a message: why its open may wait (until a writer opens it)."""
    try:
        return " (a named pipe: it opens once something opens it for writing)" if path.is_fifo() else ""
    except OSError:
        return ""


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
    open_timeout_s: float = Field(default=10.0, gt=0)
    """How long opening the file may take (a named pipe with no writer, a hung network mount)
    before the stream fails; the open is abandoned in its own thread."""
    read_timeout_s: float = Field(default=10.0, gt=0)
    """How long one read may wait for data before the stream fails (a pipe whose writer went
    quiet, say)."""
    format: str | None = None
    """FFmpeg's input format, where it cannot tell from the file: ``v4l2`` for a camera at
    ``/dev/video0`` (``run --source /dev/video0`` sets it), ``h264`` for a raw stream with an odd
    name. Default: FFmpeg probes."""
    start_s: float = Field(default=0.0, ge=0)
    """Start at this media time (seconds) instead of the beginning: at the keyframe at or before
    it, so nothing from it on is missed. With ``loop`` it counts across passes, as the stream's
    timestamps do: a stream resumed from its checkpoint under a new owner (a cluster) carries on
    with the timestamps it had. A file that cannot seek (a raw ``.h264``) starts at its
    beginning (of that pass) instead."""


@register_stage("file")
class FileSource(Source):
    Params = FileParams
    params: FileParams
    uri_schemes = ("", "file", "http", "https")
    resumable = True

    @classmethod
    def params_for_uri(cls, stream_id: str, uri: str, options: dict[str, Any]) -> dict[str, Any]:
        if uri.startswith(("http://", "https://")):
            return {**options, "path": uri, "id": stream_id}  # a URL FFmpeg opens (a file, HLS)
        path = uri.removeprefix("file://")
        if _PROTOCOL.match(path):  # file://http://...: a stream's URI names a local file, nothing else
            raise ConfigError("uri", f"{uri[:300]!r}: a file:// URI names a path on this machine, not another URL")
        return {**options, "path": path, "id": stream_id}

    def __init__(self, name: str, params: FileParams) -> None:
        super().__init__(name, params)
        self._stopped_streams: dict[str, str] = {}
        self._halt = asyncio.Event()
        """Set when this stream is asked to stop: a blocked open or read gets a short grace."""
        self._io = SourceThread(name)
        self._abandoned = False
        """A call on the open file was abandoned: it must not be touched from another thread."""

    @property
    def stream_id(self) -> str:
        return self.params.id or stream_id_from(Path(self.params.path).stem, "file")

    def check(self, base_dir: Path) -> None:
        files = self.local_files(base_dir)
        if not files:
            return  # a URL FFmpeg opens itself: nothing to look for here
        (resolved,) = files
        relative = not Path(self.params.path).expanduser().is_absolute()
        where = f" (a relative path is read from the config's directory, {base_dir})" if relative else ""
        try:
            exists, is_dir = resolved.exists(), resolved.is_dir()
        except OSError as exc:  # a name too long for the file system, say
            raise ConfigError("params.path", f"cannot look for {_shown(resolved)}: {media_error(exc)}") from None
        if not exists:
            raise ConfigError("params.path", f"no such file: {_shown(resolved)}{where}")
        if is_dir:
            raise ConfigError("params.path", f"{_shown(resolved)} is a directory, not a media file")

    def local_files(self, base_dir: Path) -> list[Path]:
        given = self.params.path
        if _PROTOCOL.match(given):
            return []  # a URL FFmpeg opens itself (a stage's own path; never a URI's: params_for_uri)
        path = Path(given).expanduser()
        return [path if path.is_absolute() else base_dir / path]

    def stop_stream(self, stream_id: str, reason: str) -> None:
        self._stopped_streams[stream_id] = reason
        if stream_id == self.stream_id:
            self._halt.set()

    async def run(self, emit: Emit) -> None:
        try:
            await self._open_and_play(emit)
        finally:
            self._io.close()  # its thread ends (an abandoned one, when its call returns)

    async def _open_and_play(self, emit: Emit) -> None:
        stream_id = self.stream_id
        path = self.ctx.resolve_path(self.params.path)
        try:
            demuxer = await self._io.call(
                Demuxer,
                path,
                self.params.tracks,
                self.params.format,
                what=f"the open{_fifo_hint(path)}",
                timeout=self.params.open_timeout_s,
                halt=self._halt,
                late=_close_late,
            )
        except (OSError, av.FFmpegError, ValueError, SourceStuck) as exc:
            # Never announced (no ``started``): the stream fails with the reason, and ends.
            await self._fail(emit, stream_id, f"cannot open {path}: {media_error(exc)}")
            return
        try:
            await self._play(emit, stream_id, path, demuxer)
        finally:
            await self._close(demuxer)

    async def _close(self, demuxer: Demuxer) -> None:
        if self._abandoned:
            return  # a call is still blocked on this file: its thread closes it when it returns
        try:
            await self._io.call(demuxer.close, what="closing it", timeout=CLOSE_TIMEOUT_S)
        except SourceStuck:
            pass  # its thread is abandoned with the file: counted, nothing else to do
        except (OSError, av.FFmpegError) as exc:
            self.ctx.logger.warning("stream %s: closing %s: %s", self.stream_id, demuxer.path, media_error(exc))

    def request_stop(self) -> None:
        super().request_stop()
        self._halt.set()

    async def _play(self, emit: Emit, stream_id: str, path: Path, demuxer: Demuxer) -> None:
        """Announce the stream, pass its packets on (paced and looped as asked), then end it."""
        await self._announce(emit, stream_id, path, demuxer)
        schedule = Schedule(demuxer.time_bases, demuxer.frame_durations)
        if self.params.start_s and not await self._start_part_way(emit, stream_id, path, demuxer, schedule):
            return
        read = await self._pass_packets(emit, stream_id, path, demuxer, schedule)
        if read is not None:
            await self._end(emit, stream_id, path, demuxer, read)

    async def _announce(self, emit: Emit, stream_id: str, path: Path, demuxer: Demuxer) -> None:
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
            seekable=True,
        )
        # The progress total counts published frames: only meaningful when every packet is a frame.
        self.ctx.stats.stream(stream_id).frame_count = info.frame_count if demuxer.audio is None else None
        await emit(StreamStarted(info))

    async def _start_part_way(
        self, emit: Emit, stream_id: str, path: Path, demuxer: Demuxer, schedule: Schedule
    ) -> bool:
        """``start_s``: shift the timestamps as the pass of a looped file that holds it had them,
        then seek to the keyframe at or before it. False if the stream has ended with an error."""
        start = Fraction(self.params.start_s)
        where = f"{self.params.start_s:.3f} s"
        kind: TrackKind = "video" if "video" in demuxer.streams else next(iter(demuxer.streams))
        late = lambda _: demuxer.close()  # noqa: E731 - what an abandoned call leaves behind
        try:
            if self.params.loop:
                ends = await self._io.call(
                    first_pass_ends,
                    demuxer,
                    what="reading one pass",
                    timeout=SCAN_TIMEOUT_S,
                    halt=self._halt,
                    late=late,
                )
                schedule.skip_passes(ends, start)
            at = schedule.unshifted(kind, start)
            seeked = await self._io.call(
                demuxer.seek, kind, at, what="a seek", timeout=self.params.read_timeout_s, halt=self._halt, late=late
            )
        except SourceStuck as exc:
            self._abandoned = True
            await self._fail(emit, stream_id, f"{path}: stuck starting at {where}: {exc}")
            return False
        except (OSError, av.FFmpegError) as exc:
            await self._fail(emit, stream_id, f"{path}: cannot start at {where}: {media_error(exc)}")
            return False
        if not seeked:
            self.ctx.logger.warning(
                "stream %s: %s cannot seek (no timestamps): starts at its beginning, not at %s",
                stream_id,
                path,
                where,
            )
        return True

    async def _pass_packets(
        self, emit: Emit, stream_id: str, path: Path, demuxer: Demuxer, schedule: Schedule
    ) -> int | None:
        """Read, pace and emit packets until the file ends (for good, without ``loop``) or a stop:
        how many were read, or None if the stream has ended with an error."""
        read = 0
        part_way = bool(self.params.start_s)
        """Started part-way: the first pass may hold no packet past the start (nothing left)."""
        while not self._stop_asked(stream_id):
            try:
                demuxed = await self._io.call(
                    demuxer.next_packet,
                    what="a read",
                    timeout=self.params.read_timeout_s,
                    halt=self._halt,
                    late=lambda _: demuxer.close(),
                )
            except SourceStuck as exc:
                self._abandoned = True
                await self._fail(emit, stream_id, f"{path}: stuck after {read} packets: {exc}")
                return None
            except av.FFmpegError as exc:
                await self._fail(emit, stream_id, f"{path}: unreadable after {read} packets: {media_error(exc)}")
                return None
            if demuxed is None:
                if read == 0 and not part_way:
                    await self._fail(emit, stream_id, f"{path}: no {' or '.join(demuxer.streams)} packets")
                    return None
                part_way = False
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

    async def _start_again(self, emit: Emit, stream_id: str, path: Path, demuxer: Demuxer, schedule: Schedule) -> bool:
        """Loop: rewind the file, its timestamps shifted past the last pass; False if it could not."""
        schedule.next_pass()
        try:
            await self._io.call(
                demuxer.rewind,
                what="opening it again",
                timeout=self.params.open_timeout_s,
                halt=self._halt,
                late=lambda _: demuxer.close(),
            )
        except (OSError, av.FFmpegError, SourceStuck) as exc:
            self._abandoned = isinstance(exc, SourceStuck)
            await self._fail(emit, stream_id, f"{path}: cannot start it again: {media_error(exc)}")
            return False
        return True

    async def _end(self, emit: Emit, stream_id: str, path: Path, demuxer: Demuxer, read: int) -> None:
        """End the stream after ``read`` packets: stopped, an error if the file holds fewer packets
        than it says, or at its end."""
        if self._stop_asked(stream_id):
            # A source ends every stream it started, even one a stage failed (that stage has
            # sent its error downstream already and swallows this end).
            await emit(EndOfStream(stream_id, "stopped"))
            return
        whole = not self.params.loop and not self.params.start_s  # read from its start to its end
        if whole and demuxer.expected_packets and read < demuxer.expected_packets:
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
