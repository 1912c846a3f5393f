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

The stage is here; its parameters are in ``rtsp_params``, one FFmpeg session in ``rtsp_connection``,
and the backoff between sessions and the timestamps across them in ``rtsp_reconnect``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import av

from pipeline.logs import redact
from pipeline.media import EndOfStream, Item, Message, StatusName, StreamInfo, StreamStarted, StreamStatus
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
        self._abandoned: dict[asyncio.Future[Any], RtspConnection | None] = {}
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
        opening = asyncio.ensure_future(self.ctx.run_blocking(RtspConnection, self.params.url, self.params))
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
        self, emit: Emit, stream_id: str, conn: RtspConnection, first: RtspConnection, session: Timeline
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

    def _abandon(self, work: asyncio.Future[Any], conn: RtspConnection | None = None) -> None:
        """Leave a blocked FFmpeg call to finish in its thread, and close what it holds then."""
        self._abandoned[work] = conn
        work.add_done_callback(self._finished)

    def _finished(self, done: asyncio.Future[Any]) -> None:
        target = self._abandoned.pop(done, None)
        if not done.cancelled() and done.exception() is None and isinstance(done.result(), RtspConnection):
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

    async def _close(self, conn: RtspConnection) -> None:
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
