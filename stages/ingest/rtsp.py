"""The ``rtsp`` source: a camera over RTSP (PyAV/FFmpeg client), kept alive through outages.

One stream per source, live (``StreamInfo.live``). The stream outlives its connections: when the
camera stops sending (``stall_timeout_s`` without a packet: ``stalled``), closes the session or
cannot be reached, the source reconnects with exponential backoff and full jitter, and the same
stream goes on; the decoder keeps its context and seq numbers keep increasing. Each new session
starts at a keyframe and its timestamps are shifted so that ``pts`` keeps increasing, with the
wall-clock length of the outage as a gap in media time. Connection state travels in-band as
``StreamStatus`` (``connecting``, ``connected``, ``stalled``, ``reconnecting``), so ``publish``
reports it on the stream's events subject in order with the frames.

Every blocking FFmpeg call (open, read, close) runs on the stream's own thread
(``pipeline.sourcethread``), never in the shared pool, so cameras that hang cannot stall other
streams. A read that blocks on a silent camera is abandoned after ``stall_timeout_s`` (an open
after ``open_timeout_s`` plus a margin, should FFmpeg's own timeout not fire), and so is any call
still blocked when a stop is asked; the abandoned thread returns once FFmpeg's own timeout fires
(``read_timeout_s``, PyAV's interrupt callback), and closes the connection then.

The source reads as fast as the camera sends; put the decoder behind a ``drop_oldest`` edge so
a slow graph drops (and counts) packets instead of adding latency.

The stage is here; its parameters are in ``rtsp_params``, one FFmpeg session in ``rtsp_connection``,
and the backoff between sessions and the timestamps across them in ``rtsp_reconnect``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import av

from pipeline.logs import redact
from pipeline.media import EndOfStream, Item, Message, StatusName, StreamInfo, StreamStarted, StreamStatus
from pipeline.sourcethread import SourceStuck, SourceThread
from pipeline.stage import Source, register_stage

from .errors import media_error
from .rtsp_connection import RtspConnection, codec_change
from .rtsp_params import RtspParams, stream_id_from_url
from .rtsp_reconnect import Timeline, backoff_delay

Emit = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Stalled:
    seconds: float


@dataclass(frozen=True, slots=True)
class _Halted:
    pass


_HALTED = _Halted()

OPEN_MARGIN_S = 5.0
"""An open still blocked this long past ``open_timeout_s`` (FFmpeg's own timeout did not fire) is
abandoned."""
CLOSE_TIMEOUT_S = 5.0


def _close_late(conn: RtspConnection | None) -> None:
    """A connection opened after its open was abandoned (a stop, a stall): closed at once."""
    if conn is not None:
        conn.close()


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
        self._io = SourceThread(name)

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
        session = Timeline()
        started: RtspConnection | None = None  # the first session: what the stream was announced with
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
            if isinstance(opened, RtspConnection):
                conn = opened
                if started is None:
                    started = conn
                    await emit(StreamStarted(self._info(stream_id, url, conn)))
                elif (changed := codec_change(started, conn)) is not None:
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

    async def _open(self) -> RtspConnection | _Halted | str:
        """A connection, ``_HALTED`` if a stop came first, or why it could not connect."""
        try:
            return await self._io.call(
                RtspConnection,
                self.params.url,
                self.params,
                what="connecting",
                timeout=self.params.open_timeout_s + OPEN_MARGIN_S,
                halt=self._halt,
                grace_s=0.0,
                late=_close_late,
            )
        except SourceStuck as exc:
            return _HALTED if exc.stopping else str(exc)
        except (OSError, av.FFmpegError, ValueError) as exc:
            return media_error(exc)

    async def _pump(
        self, emit: Emit, stream_id: str, conn: RtspConnection, first: RtspConnection, session: Timeline
    ) -> _Stalled | _Halted | str:
        """Pass the session's packets on until it ends: why it ended (stall, stop, or a reason)."""
        session.begin(conn, reconnected=conn is not first)
        stall = self.params.stall_timeout_s
        while True:
            session.reading = True
            try:
                read = await self._io.call(
                    conn.next_packet,
                    what="a read",
                    timeout=stall,
                    halt=self._halt,
                    grace_s=0.0,
                    late=lambda _: conn.close(),  # still blocked in FFmpeg: closed at its read timeout
                )
            except SourceStuck as exc:
                return _HALTED if exc.stopping else _Stalled(stall)
            except (OSError, av.FFmpegError) as exc:
                session.reading = False
                return f"lost {redact(self.params.url)}: {media_error(exc)}"
            session.reading = False
            if read is None:
                return f"{redact(self.params.url)}: the server ended the session"
            kind, packet, captured = read
            media = session.place(kind, packet, first)
            if media is None:
                continue  # before the session's first keyframe: undecodable
            await emit(Item(stream_id=stream_id, media=media, capture_time=captured))
            if self._halt.is_set():
                return _HALTED

    async def stop(self) -> None:
        self._io.close()

    async def _close(self, conn: RtspConnection) -> None:
        with contextlib.suppress(SourceStuck):  # else left to its abandoned thread
            await self._io.call(conn.close, what="closing", timeout=CLOSE_TIMEOUT_S)

    async def _sleep(self, delay: float) -> bool:
        """Wait ``delay`` seconds; True if a stop was asked meanwhile."""
        try:
            await asyncio.wait_for(self._halt.wait(), timeout=delay)
        except TimeoutError:
            return False
        return True

    def _info(self, stream_id: str, url: str, conn: RtspConnection) -> StreamInfo:
        return StreamInfo(
            stream_id=stream_id,
            uri=url,
            live=True,
            video=conn.video,
            frame_rate=conn.frame_rate,
            audio=conn.audio,
        )

    async def _give_up(self, emit: Emit, stream_id: str, started: RtspConnection | None, message: str) -> None:
        self.ctx.logger.error("stream %s: %s", stream_id, message)
        self.ctx.stats.stream(stream_id).error = message
        if started is None:  # announce it even so: subscribers see it start, fail and end
            await emit(StreamStarted(StreamInfo(stream_id=stream_id, uri=redact(self.params.url), live=True)))
        await emit(EndOfStream(stream_id, "error", message))
