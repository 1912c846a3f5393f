"""Where each packet of a file stream lands in media time, and when it is due at native rate;
and where a stream that starts part-way (``start_s``: a stream resumed under a new owner) begins."""

from __future__ import annotations

import time
from fractions import Fraction
from typing import Any

from pipeline.media import TrackKind


class Schedule:
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
        end = max(self._last_end.values(), default=Fraction(0))
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

    def skip_passes(self, first_pass_ends: dict[TrackKind, Fraction], start_s: Fraction) -> None:
        """Shift the timestamps as the pass of a looped file that holds ``start_s`` had them: as
        if every pass before it had been read (each ends where the file's first pass ended,
        shifted, exactly as ``next_pass`` computes it after reading one)."""
        self._last_end = dict(first_pass_ends)
        while self._last_end and max(self._last_end.values()) <= start_s:
            self.next_pass()
            self._last_end = {
                kind: self._offsets[kind] * self._time_bases[kind] + end for kind, end in first_pass_ends.items()
            }
        # Left as this pass's ends: a track with no packet past ``start_s`` still counts.

    def unshifted(self, kind: TrackKind, at_s: Fraction) -> Fraction:
        """Where media time ``at_s`` is in the file itself (seconds), in the current pass."""
        return at_s - self._offsets[kind] * self._time_bases[kind]


def first_pass_ends(demuxer: Any) -> dict[TrackKind, Fraction]:
    """Blocking: where each track of the file ends (seconds), as a schedule places its packets:
    reads the file through once (no decoding), then rewinds it."""
    schedule = Schedule(demuxer.time_bases, demuxer.frame_durations)
    while (demuxed := demuxer.next_packet()) is not None:
        schedule.place(*demuxed)
    demuxer.rewind()
    return dict(schedule._last_end)
