"""The ``rtsp`` source: a camera over RTSP (PyAV/FFmpeg client), kept alive through outages.

One stream per source, live (``StreamInfo.live``). The stream outlives its connections: when the
camera stops sending (``stall_timeout_s`` without a packet: ``stalled``), closes the session or
cannot be reached, the source reconnects with exponential backoff and full jitter, and the same
stream goes on; the decoder keeps its context and seq numbers keep increasing. Each new session
starts at a keyframe and its timestamps are shifted so that ``pts`` keeps increasing, with the
wall-clock length of the outage as a gap in media time. Connection state travels in-band as
``StreamStatus`` (``connecting``, ``connected``, ``stalled``, ``reconnecting``), so ``publish``
reports it on the stream's events subject in order with the frames.

Every blocking FFmpeg call (open, read) runs in the thread pool. A read that blocks on a silent
camera is abandoned by the watchdog after ``stall_timeout_s``; the thread itself returns once
FFmpeg's own timeout fires (``read_timeout_s``, PyAV's interrupt callback), and the connection is
closed then. The source reads as fast as the camera sends; put the decoder behind a
``drop_oldest`` edge so a slow graph drops (and counts) packets instead of adding latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal
from urllib.parse import urlsplit

import av
from pydantic import Field, model_validator

from pipeline.logs import redact
from pipeline.media import (
    AudioCodecParams,
    EncodedPacket,
    EndOfStream,
    Item,
    Message,
    StatusName,
    StreamInfo,
    StreamStarted,
    StreamStatus,
    TrackKind,
    VideoCodecParams,
)
from pipeline.stage import Source, TrackSelection, register_stage

from .errors import media_error

Emit = Callable[[Message], Awaitable[None]]


class RtspParams(TrackSelection):
    url: str = Field(pattern=r"^rtsps?://\S+$")
    """``rtsp://[user:password@]host[:port]/path``; the password never appears in events or logs."""
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$")
    """Stream id; defaults to the URL's last path segment (or its host)."""
    transport: Literal["tcp", "udp"] = "tcp"
    """RTP over the RTSP TCP connection (interleaved), or over UDP."""
    open_timeout_s: float = Field(default=5.0, gt=0)
    """How long connecting (RTSP handshake and probing the stream) may take."""
    read_timeout_s: float = Field(default=5.0, gt=0)
    """How long FFmpeg waits in one read before giving up (ends a read the watchdog abandoned)."""
    stall_timeout_s: float = Field(default=5.0, gt=0)
    """No packet for this long: the stream is ``stalled`` and the source reconnects."""
    backoff_initial_s: float = Field(default=0.5, gt=0)
    """The first reconnect waits up to this long; each failed attempt in a row doubles it."""
    backoff_max_s: float = Field(default=10.0, gt=0)
    """The cap of the backoff; the actual wait is uniform in [0, cap] (full jitter)."""
    max_reconnects: int | None = Field(default=None, ge=0)
    """Reconnect attempts in a row (since the stream last delivered packets) before the stream
    ends with an error; null: forever."""

    @model_validator(mode="after")
    def _backoff_order(self) -> RtspParams:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s}) must be >= backoff_initial_s ({self.backoff_initial_s})"
            )
        return self


def backoff_delay(attempt: int, initial_s: float, max_s: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before reconnect ``attempt`` (1, 2, ...): exponential backoff with full
    jitter, uniform in ``[0, min(max_s, initial_s * 2 ** (attempt - 1))]``, so many cameras
    that lost the same server do not all come back at the same instant."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    cap = min(max_s, initial_s * 2.0 ** min(attempt - 1, 64))
    return cap * rand()


def stream_id_from_url(url: str) -> str:
    """A stream id from the URL: its last path segment, else its host, made subject-safe."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    raw = segments[-1] if segments else (parts.hostname or "")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", raw) or "rtsp"


class _Connection:
    """One RTSP session; its methods block (they run in the thread pool)."""

    def __init__(self, url: str, params: RtspParams) -> None:
        options = {
            "rtsp_transport": params.transport,
            # FFmpeg's RTSP socket I/O timeout, in microseconds.
            "timeout": str(int(params.read_timeout_s * 1_000_000)),
        }
        # PyAV's own (open, read) timeouts interrupt a blocked FFmpeg call from the inside.
        self.container: Any = av.open(
            url, mode="r", options=options, timeout=(params.open_timeout_s, params.read_timeout_s)
        )
        self._lock = threading.Lock()
        self._closed = False
        self.streams: dict[TrackKind, Any] = {}
        for kind in params.tracks:
            found = self.container.streams.video if kind == "video" else self.container.streams.audio
            if found:
                self.streams[kind] = found[0]
        if not self.streams:
            self.close()
            raise ValueError(f"has no {' or '.join(params.tracks)} stream")
        self.kinds: dict[int, TrackKind] = {stream.index: kind for kind, stream in self.streams.items()}
        self.time_bases: dict[TrackKind, Fraction] = {
            kind: stream.time_base or Fraction(1, 90000) for kind, stream in self.streams.items()
        }
        self.video: VideoCodecParams | None = None
        self.audio: AudioCodecParams | None = None
        self.frame_rate: Fraction | None = None
        if "video" in self.streams:
            stream = self.streams["video"]
            codec = stream.codec_context
            self.video = VideoCodecParams(codec.name, codec.width, codec.height, codec.extradata)
            self.frame_rate = Fraction(stream.average_rate) if stream.average_rate else None
        if "audio" in self.streams:
            codec = self.streams["audio"].codec_context
            self.audio = AudioCodecParams(codec.name, codec.sample_rate, codec.channels, codec.extradata)
        self._packets: Iterator[Any] = self.container.demux(list(self.streams.values()))

    def describe(self) -> str:
        tracks = []
        if self.video is not None:
            tracks.append(f"{self.video.codec} {self.video.width}x{self.video.height}")
        if self.audio is not None:
            tracks.append(f"{self.audio.codec} {self.audio.sample_rate} Hz")
        return ", ".join(tracks)

    def next_packet(self) -> tuple[TrackKind, Any, float] | None:
        """The next packet, its track and the wall-clock time it was read; None at the end of
        the session (the server closed it)."""
        for packet in self._packets:
            if packet.size:  # the demuxer's final empty packet only means "flush"
                return self.kinds[packet.stream.index], packet, time.time()
        return None

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(OSError, av.FFmpegError):
            self.container.close()


@dataclass(frozen=True, slots=True)
class _Stalled:
    seconds: float


@dataclass(frozen=True, slots=True)
class _Halted:
    pass


_HALTED = _Halted()


@register_stage("rtsp")
class RtspSource(Source):
    Params = RtspParams
    params: RtspParams
    uri_schemes = ("rtsp", "rtsps")

    @classmethod
    def params_for_uri(cls, stream_id: str, uri: str, options: dict[str, Any]) -> dict[str, Any]:
        return {**options, "url": uri, "id": stream_id}

    def __init__(self, name: str, params: RtspParams, *, rand: Callable[[], float] = random.random) -> None:
        super().__init__(name, params)
        self._rand = rand
        self._halt = asyncio.Event()
        self._stop_reason: str | None = None
        self._abandoned: dict[asyncio.Future[Any], _Connection | None] = {}
        """FFmpeg calls left blocked (a stall, a stop): closed when they return, awaited by ``stop``."""

    @property
    def stream_id(self) -> str:
        return self.params.id or stream_id_from_url(self.params.url)

    def request_stop(self) -> None:
        super().request_stop()
        self._halt.set()

    def stop_stream(self, stream_id: str, reason: str) -> None:
        if stream_id == self.stream_id:
            self._stop_reason = reason
            self._halt.set()

    async def run(self, emit: Emit) -> None:
        stream_id = self.stream_id
        url = redact(self.params.url)
        counters = self.ctx.stats.stream(stream_id)
        session = _Timeline()
        started: _Connection | None = None  # the first session: what the stream was announced with
        failures = 0  # reconnect attempts in a row since packets last flowed

        async def status(name: StatusName, detail: str) -> None:
            self.ctx.logger.info("stream %s: %s: %s", stream_id, name, detail)
            await emit(StreamStatus(stream_id, name, detail))

        while True:
            attempt = f" (reconnect attempt {failures})" if failures else ""
            await status("connecting", f"{url} over {self.params.transport}{attempt}")
            opened = await self._open()
            if isinstance(opened, _Halted):
                break
            if isinstance(opened, _Connection):
                conn = opened
                if started is None:
                    started = conn
                    await emit(StreamStarted(self._info(stream_id, url, conn)))
                elif (changed := _codec_change(started, conn)) is not None:
                    await self._close(conn)
                    await self._give_up(emit, stream_id, started, f"{url}: {changed} after reconnecting")
                    return
                else:
                    counters.reconnects += 1
                gap = session.gap_s()
                resumed = f"; resumed after {gap:.2f} s without media" if gap is not None else ""
                await status("connected", f"{url}: {conn.describe()} over {self.params.transport}{resumed}")
                try:
                    outcome = await self._pump(emit, stream_id, conn, started, session)
                finally:
                    if not session.reading:
                        await self._close(conn)
                if isinstance(outcome, _Halted):
                    break
                if session.packets_this_session:
                    failures = 0
                if isinstance(outcome, _Stalled):
                    reason = f"no packet for {outcome.seconds:.1f} s"
                    await status("stalled", f"{url}: {reason}")
                else:
                    reason = outcome
            else:
                reason = f"cannot open {url}: {opened}"
            limit = self.params.max_reconnects
            if limit is not None and failures >= limit:
                tries = f"after {failures} reconnect attempt{'s' if failures != 1 else ''}"
                await self._give_up(emit, stream_id, started, f"{url}: gave up {tries}: {reason}")
                return
            failures += 1
            delay = backoff_delay(failures, self.params.backoff_initial_s, self.params.backoff_max_s, self._rand)
            await status("reconnecting", f"{reason}; attempt {failures} in {delay:.2f} s")
            if await self._sleep(delay):
                break
        if started is None:
            await emit(StreamStarted(StreamInfo(stream_id=stream_id, uri=url, live=True)))
        await emit(EndOfStream(stream_id, "stopped"))

    # --- one session --------------------------------------------------------------------------------

    async def _open(self) -> _Connection | _Halted | str:
        """A connection, ``_HALTED`` if a stop came first, or why it could not connect."""
        opening = asyncio.ensure_future(self.ctx.run_blocking(_Connection, self.params.url, self.params))
        outcome = await self._race(opening, None)
        if outcome is _HALTED:
            self._abandon(opening)
            return _HALTED
        try:
            conn = opening.result()
        except (OSError, av.FFmpegError, ValueError) as exc:
            return media_error(exc)
        return conn

    async def _pump(
        self, emit: Emit, stream_id: str, conn: _Connection, first: _Connection, session: _Timeline
    ) -> _Stalled | _Halted | str:
        """Pass the session's packets on until it ends: why it ended (stall, stop, or a reason)."""
        session.begin(conn, reconnected=conn is not first)
        stall = self.params.stall_timeout_s
        while True:
            reading = asyncio.ensure_future(self.ctx.run_blocking(conn.next_packet))
            session.reading = True
            outcome = await self._race(reading, stall)
            if outcome is not None:
                # Still blocked in FFmpeg: it returns at its read timeout, and closes then.
                self._abandon(reading, conn)
                return _Stalled(stall) if outcome is not _HALTED else _HALTED
            session.reading = False
            try:
                read = reading.result()
            except (OSError, av.FFmpegError) as exc:
                return f"lost {redact(self.params.url)}: {media_error(exc)}"
            if read is None:
                return f"{redact(self.params.url)}: the server ended the session"
            kind, packet, captured = read
            media = session.place(kind, packet, first)
            if media is None:
                continue  # before the session's first keyframe: undecodable
            await emit(Item(stream_id=stream_id, media=media, capture_time=captured))
            if self._halt.is_set():
                return _HALTED

    async def _race(self, work: asyncio.Future[Any], timeout: float | None) -> _Stalled | _Halted | None:
        """Wait for ``work``; None when it finished, ``_HALTED`` on a stop, ``_Stalled`` on timeout."""
        halted = asyncio.ensure_future(self._halt.wait())
        try:
            done, _ = await asyncio.wait({work, halted}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            halted.cancel()
        if work in done:
            return None
        return _HALTED if self._halt.is_set() else _Stalled(timeout or 0.0)

    def _abandon(self, work: asyncio.Future[Any], conn: _Connection | None = None) -> None:
        """Leave a blocked FFmpeg call to finish in its thread, and close what it holds then."""
        self._abandoned[work] = conn
        work.add_done_callback(self._finished)

    def _finished(self, done: asyncio.Future[Any]) -> None:
        target = self._abandoned.pop(done, None)
        if not done.cancelled() and done.exception() is None and isinstance(done.result(), _Connection):
            target = done.result()  # an open that succeeded after all
        if target is not None:
            target.close()

    async def stop(self) -> None:
        # Before the thread pool goes: a container must never outlive the loop half-read (FFmpeg
        # ends each blocked call by its own timeout, so this wait is bounded).
        pending = list(self._abandoned)
        if pending:
            limit = max(self.params.open_timeout_s, self.params.read_timeout_s) + 1.0
            await asyncio.wait(pending, timeout=limit)
            for work in pending:
                if work.done():
                    self._finished(work)

    async def _close(self, conn: _Connection) -> None:
        try:
            await self.ctx.run_blocking(conn.close)
        except RuntimeError:  # the thread pool is shutting down
            conn.close()

    async def _sleep(self, delay: float) -> bool:
        """Wait ``delay`` seconds; True if a stop was asked meanwhile."""
        try:
            await asyncio.wait_for(self._halt.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True

    def _info(self, stream_id: str, url: str, conn: _Connection) -> StreamInfo:
        return StreamInfo(
            stream_id=stream_id,
            uri=url,
            live=True,
            video=conn.video,
            frame_rate=conn.frame_rate,
            audio=conn.audio,
        )

    async def _give_up(self, emit: Emit, stream_id: str, started: _Connection | None, message: str) -> None:
        self.ctx.logger.error("stream %s: %s", stream_id, message)
        self.ctx.stats.stream(stream_id).error = message
        if started is None:  # announce it even so: subscribers see it start, fail and end
            await emit(StreamStarted(StreamInfo(stream_id=stream_id, uri=redact(self.params.url), live=True)))
        await emit(EndOfStream(stream_id, "error", message))


class _Timeline:
    """Keeps a stream's timestamps increasing across sessions, each starting at a keyframe.

    The first session's timestamps pass unchanged. A later session is shifted (every track by the
    same time, each in its own ticks) so that its first packet lands after the previous
    session's last one by the wall-clock time the stream was without media.
    """

    def __init__(self) -> None:
        self.reading = False
        self.packets_this_session = 0
        self._last_end_s: Fraction | None = None  # media time just after the last packet passed on
        self._last_wall: float | None = None  # when it was read
        self._last_pts: dict[TrackKind, int] = {}
        self._shift_s: Fraction | None = None
        self._conn: _Connection | None = None
        self._await_key = False
        self._prepend: bytes | None = None

    def gap_s(self) -> float | None:
        return None if self._last_wall is None else time.time() - self._last_wall

    def begin(self, conn: _Connection, *, reconnected: bool) -> None:
        self._conn = conn
        self.reading = False
        self.packets_this_session = 0
        self._shift_s = None if reconnected else Fraction(0)
        self._await_key = "video" in conn.streams
        # A new session whose parameter sets differ from the ones the decoder was opened with:
        # hand them in-band with the first keyframe (H.264/HEVC Annex B extradata from the SDP).
        self._prepend = None
        if reconnected and conn.video is not None and conn.video.extradata:
            extradata = conn.video.extradata
            if extradata.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
                self._prepend = extradata

    def place(self, kind: TrackKind, packet: Any, first: _Connection) -> EncodedPacket | None:
        assert self._conn is not None
        if kind == "video" and self._await_key:
            if not packet.is_keyframe:
                return None
            self._await_key = False
            if self._prepend is not None and (first.video is None or first.video.extradata != self._prepend):
                packet = _with_prefix(packet, self._prepend)
        time_base = self._conn.time_bases[kind]
        stamp = packet.dts if packet.dts is not None else packet.pts
        if self._shift_s is None:
            if stamp is None:
                return None  # cannot place it yet; the next keyframe can
            target = self._last_end_s or Fraction(0)
            if self._last_wall is not None:
                target += Fraction(max(0.0, time.time() - self._last_wall)).limit_denominator(1_000_000)
            self._shift_s = target - stamp * time_base
        offset = round(self._shift_s / time_base)
        if packet.pts is None:
            # FFmpeg hands the probed first packet over without a time: it goes with the last one.
            pts = self._last_pts.get(kind, round((self._last_end_s or Fraction(0)) / time_base))
        else:
            pts = packet.pts + offset
        if offset or packet.pts is None:
            packet.pts = pts
            packet.dts = packet.dts + offset if packet.dts is not None else pts
        self._last_pts[kind] = pts
        end = (pts + (packet.duration or 0)) * time_base
        self._last_end_s = max(self._last_end_s or end, end)
        self._last_wall = time.time()
        self.packets_this_session += 1
        return EncodedPacket(packet, pts, time_base, bool(packet.is_keyframe), kind)


def _with_prefix(packet: Any, prefix: bytes) -> Any:
    joined = av.Packet(prefix + bytes(packet))
    joined.pts, joined.dts = packet.pts, packet.dts
    if packet.time_base is not None:
        joined.time_base = packet.time_base
    joined.is_keyframe = True
    return joined


def _codec_change(first: _Connection, now: _Connection) -> str | None:
    for kind, before, after in (("video", first.video, now.video), ("audio", first.audio, now.audio)):
        # A track that comes or goes is no reason to give up (the decoders see packets or not).
        if before is not None and after is not None and before.codec != after.codec:
            return f"the {kind} codec changed from {before.codec} to {after.codec}"
    return None
