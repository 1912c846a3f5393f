"""The receiving side of a ``whip`` stream: the peer's aiortc tracks read into bounded buffers.

``TrackReceiver`` reads each track aiortc hands over (``receive``), numbers the frames in
arrival order across tracks, turns each track's RTP timestamps into pts that keep increasing
(shifted so a track's first frame sits at its arrival time after the stream's first frame), makes
audio PCM packets, and keeps at most a buffer's capacity of each kind waiting, dropping the
oldest. It notes when the peer is gone (every track ended, or the source says the connection
went) and wakes whoever waits on ``wake`` whenever there is something new. The stream itself
(negotiation, ``StreamStarted``, items, the end) is ``whip.WhipSource``'s.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from pipeline.media import TrackKind

AUDIO_RATE = 48000
AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
OVERFLOW = "overflow:whip"
"""Where video frames dropped by a full buffer are counted (``drops``)."""

CountLost = Callable[[TrackKind, str, int], None]
"""Counts received frames that never enter the graph: (kind, where, how many)."""


@dataclass(slots=True)
class _Timeline:
    """One track's RTP timestamps (32 bits, random origin) as pts that keep increasing."""

    last_raw: int
    pts: int

    def advance(self, raw: int) -> int:
        delta = (raw - self.last_raw) & 0xFFFFFFFF
        if delta >= 1 << 31:  # reordered: a little before the last one
            delta -= 1 << 32
        self.last_raw = raw
        self.pts += delta
        return self.pts


@dataclass(slots=True)
class Received:
    order: int
    arrived: float
    media: Any
    """video: the ``av.VideoFrame``; audio: an ``EncodedPacket`` of PCM."""
    pts: int
    time_base: Fraction


class TrackReceiver:
    """One peer's tracks -> bounded buffers, one per kind; ``next`` takes the earliest frame."""

    def __init__(self, stream_id: str, capacity: dict[TrackKind, int], count_lost: CountLost) -> None:
        self.stream_id = stream_id
        self.wake = asyncio.Event()
        """Set when a frame arrives or the peer goes: the stream's loop waits on it."""
        self.peer_gone: str | None = None
        """Why the peer is gone (the first reason noted), or None while it is there."""
        self.video_size = (0, 0)
        """The first video frame's size (0, 0 until one arrives)."""
        self._capacity = capacity
        self._count_lost = count_lost
        self._buffers: dict[TrackKind, deque[Received]] = {"video": deque(), "audio": deque()}
        self.readers: set[asyncio.Task[None]] = set()
        """The tasks reading the tracks, until each track ends (or ``stop_reading``)."""
        self._open_tracks = 0
        self._order = itertools.count()
        self._origin: float | None = None
        self._timelines: dict[TrackKind, _Timeline] = {}
        self._resampler: Any = None

    def receive(self, track: MediaStreamTrack) -> None:
        """Read a track the peer sends until it ends (or ``stop_reading``)."""
        self._open_tracks += 1
        task = asyncio.get_running_loop().create_task(self._read(track), name=f"whip:{self.stream_id}:{track.kind}")
        self.readers.add(task)
        task.add_done_callback(self.readers.discard)

    def peer_went(self, why: str) -> None:
        """The peer is gone (its connection failed or closed): the stream ends once drained."""
        self.peer_gone = self.peer_gone or why
        self.wake.set()

    async def _read(self, track: MediaStreamTrack) -> None:
        kind: TrackKind = "video" if track.kind == "video" else "audio"
        try:
            while True:
                frame = await track.recv()
                self._take(kind, frame)
        except MediaStreamError:
            pass  # the track ended (the peer closed it, or our connection closed)
        finally:
            self._open_tracks -= 1
            if self._open_tracks == 0:
                self.peer_gone = self.peer_gone or "every track ended"
            self.wake.set()

    def _take(self, kind: TrackKind, frame: Any) -> None:
        arrived = time.time()
        if self._origin is None:
            self._origin = arrived
        time_base = Fraction(frame.time_base) if frame.time_base else Fraction(1, 90000)
        raw = int(frame.pts or 0)
        timeline = self._timelines.get(kind)
        if timeline is None:
            first = round((arrived - self._origin) / time_base)
            timeline = self._timelines[kind] = _Timeline(last_raw=raw, pts=first)
            pts = first
        else:
            pts = timeline.advance(raw)
        media: Any = frame
        if kind == "audio":
            pts, time_base = round(pts * time_base / AUDIO_TIME_BASE), AUDIO_TIME_BASE
            media = self._pcm_packet(frame, pts)
        elif self.video_size == (0, 0):
            self.video_size = (frame.width, frame.height)
        buffer = self._buffers[kind]
        if len(buffer) >= self._capacity[kind]:
            buffer.popleft()
            self._count_lost(kind, OVERFLOW, 1)
        buffer.append(Received(next(self._order), arrived, media, pts, time_base))
        self.wake.set()

    def _pcm_packet(self, frame: Any, pts: int) -> Any:
        """An audio frame as one packet of 48 kHz stereo s16 PCM (``audio_decode`` reads it)."""
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="stereo", rate=AUDIO_RATE)
        frame.pts = None  # the resampler would otherwise insist on continuous timestamps
        data = b"".join(out.to_ndarray().tobytes() for out in self._resampler.resample(frame))
        packet = av.Packet(data)
        packet.pts = pts
        packet.time_base = AUDIO_TIME_BASE
        return packet

    def next(self) -> tuple[TrackKind, Received] | None:
        """The earliest frame received and not yet sent, of any track."""
        heads = [(buffer[0].order, kind) for kind, buffer in self._buffers.items() if buffer]
        if not heads:
            return None
        kind = min(heads)[1]
        return kind, self._buffers[kind].popleft()

    def drop_leftovers(self) -> None:
        """Count what still waits as lost (the stream is ending) and let it go."""
        for kind, buffer in self._buffers.items():
            if buffer:
                self._count_lost(kind, "shutdown", len(buffer))
                buffer.clear()

    async def stop_reading(self) -> None:
        """Stop reading the tracks, and wait until every reader has ended."""
        for task in list(self.readers):
            task.cancel()
        if self.readers:
            await asyncio.gather(*self.readers, return_exceptions=True)

    def clear(self) -> None:
        """Forget what still waits, uncounted (the stream is closed)."""
        self._buffers = {"video": deque(), "audio": deque()}
