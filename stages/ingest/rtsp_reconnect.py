"""Across an RTSP stream's sessions: when to try to connect again, and how each new session's
timestamps carry on the stream's."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import av

from pipeline.media import EncodedPacket, TrackKind

from .rtsp_connection import RtspConnection


def backoff_delay(attempt: int, initial_s: float, max_s: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before reconnect ``attempt`` (1, 2, ...): exponential backoff with full
    jitter, uniform in ``[0, min(max_s, initial_s * 2 ** (attempt - 1))]``, so many cameras
    that lost the same server do not all come back at the same instant."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    cap = min(max_s, initial_s * 2.0 ** min(attempt - 1, 64))
    return cap * rand()


class Timeline:
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
        self._conn: RtspConnection | None = None
        self._await_key = False
        self._prepend: bytes | None = None

    def gap_s(self) -> float | None:
        return None if self._last_wall is None else time.time() - self._last_wall

    def begin(self, conn: RtspConnection, *, reconnected: bool) -> None:
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

    def place(self, kind: TrackKind, packet: Any, first: RtspConnection) -> EncodedPacket | None:
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
