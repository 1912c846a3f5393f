"""Media that flows between stages.

Timestamps follow PyAV: an integer ``pts`` in units of a ``Fraction`` ``time_base`` is the truth;
the wall-clock capture time (``time.time()`` seconds) is kept apart for latency.
Control items (``StreamStarted``, ``StreamStatus``, ``EndOfStream``) travel in-band, in order with the data, so
every stage sees a stream begin before its first item and end after its last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import numpy as np


@dataclass(frozen=True, slots=True)
class VideoCodecParams:
    """What a decoder needs to open a video stream that a source demuxed."""

    codec: str
    width: int
    height: int
    extradata: bytes | None = None
    decoded: bool = False
    """The source hands over decoded frames (a WebRTC peer's, which aiortc decodes): ``codec`` is
    what came over the wire, and there is nothing left to decode."""


@dataclass(frozen=True, slots=True)
class AudioCodecParams:
    """What a decoder needs to open an audio stream that a source demuxed."""

    codec: str
    sample_rate: int
    channels: int
    extradata: bytes | None = None


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """One stream: a camera, a peer, a file. ``live`` streams are paced by the outside world.

    ``video`` / ``audio`` are None for a track the stream does not carry (or was not asked for).
    ``frame_count`` counts video frames.
    """

    stream_id: str
    uri: str
    live: bool
    video: VideoCodecParams | None = None
    frame_rate: Fraction | None = None
    duration_s: float | None = None
    frame_count: int | None = None
    audio: AudioCodecParams | None = None
    seekable: bool = False
    """A file: each frame has the same timestamp in every run of it, so a run can start part-way
    (``start_s``) and a frame's results keep one message id (a cluster resumes it elsewhere)."""


TrackKind = Literal["video", "audio"]


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    """A compressed packet as demuxed; ``payload`` is the demuxer's own packet object.

    ``pts`` is in the packet's own track's ``time_base``; ``kind`` says which track it belongs to.
    """

    payload: Any
    pts: int | None
    time_base: Fraction
    is_keyframe: bool
    kind: TrackKind = "video"


@dataclass(frozen=True, slots=True)
class VideoFrame:
    """Decoded pixels: ``data`` is HxWx3 uint8 BGR (numpy on the CPU, a CUDA array on the GPU).

    A decoder may hand the frame over still in its own format (``decoded``, a PyAV frame) with
    ``data`` None: the conversion (most of a CPU decoder's cost) is then paid by the first stage
    that calls ``bgr()``, so a frame dropped on its way (a live stream the graph cannot keep up
    with drops most) never pays it.
    """

    data: Any
    pts: int
    time_base: Fraction
    width: int
    height: int
    decoded: Any = None
    """The decoder's own frame while ``data`` is not converted yet."""

    def bgr(self) -> Any:
        """The BGR array, converted on first use. Blocking: call it in the thread pool."""
        data = self.data
        if data is None:
            decoded = self.decoded
            if decoded is None:  # another thread converted it meanwhile
                return self.data
            data = decoded.to_ndarray(format="bgr24")
            object.__setattr__(self, "data", data)  # a cache: the frame's value does not change
            object.__setattr__(self, "decoded", None)
        return data

    @property
    def time_s(self) -> float:
        return float(self.pts * self.time_base)


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Decoded audio: ``data`` is channels x samples float32; ``pts`` counts samples
    (``time_base`` is 1/``sample_rate``)."""

    data: np.ndarray
    pts: int
    time_base: Fraction
    sample_rate: int

    @property
    def time_s(self) -> float:
        return float(self.pts * self.time_base)


Media = EncodedPacket | VideoFrame | AudioChunk


@dataclass(slots=True)
class Item:
    """One unit of work for one stream, with what the stages found about it so far.

    Mutable on purpose: each stage adds its tensors, results and timings in place. A stage that
    hands one item to several branches forks it first (``fork``), so branches never share dicts.

    ``timings_ms`` tiles the item's time since ``capture_time`` into named parts: each part ends
    with a ``mark`` that gives it everything since the previous part ended, so ``capture_time``
    plus the parts so far is always the moment the last one ended, and a result's parts add up
    to its ``total`` by construction (``add_time`` may split a stretch not marked yet: it must
    not count time another part already has).
    """

    stream_id: str
    media: Media
    capture_time: float
    seq: int = -1
    tensors: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    last_stage: str = ""
    """The stage that passed the item on last (a join tells its branches apart by it)."""

    def add_time(self, key: str, ms: float) -> None:
        """Add ``ms`` to part ``key``: a stretch since the last mark that a stage measured itself
        (the wait in a batcher); the next ``mark`` counts from after it."""
        self.timings_ms[key] = self.timings_ms.get(key, 0.0) + ms

    def mark(self, key: str, *, now: float | None = None) -> float:
        """End the current part as ``key``: the time from the end of the item's last part (its
        capture, before the first) to ``now`` (wall clock, default: this moment) goes to ``key``.
        Returns those ms (0 if the parts already reach past ``now``: a clock stepped back)."""
        ms = self.unaccounted_ms(time.time() if now is None else now)
        self.add_time(key, ms)
        return ms

    def unaccounted_ms(self, now: float) -> float:
        """The ms from the end of the item's last part to ``now`` (wall clock), never below 0."""
        return max(0.0, (now - self.capture_time) * 1000.0 - sum(self.timings_ms.values()))

    def fork(self) -> Item:
        return Item(
            stream_id=self.stream_id,
            media=self.media,
            capture_time=self.capture_time,
            seq=self.seq,
            tensors=dict(self.tensors),
            results=dict(self.results),
            timings_ms=dict(self.timings_ms),
            last_stage=self.last_stage,
        )


@dataclass(frozen=True, slots=True)
class StreamStarted:
    """Sent by a source before a stream's first item."""

    info: StreamInfo

    @property
    def stream_id(self) -> str:
        return self.info.stream_id


EndReason = Literal["eof", "stopped", "error"]


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """Sent after a stream's last item: ``eof`` (finished), ``stopped`` (asked to), or ``error``."""

    stream_id: str
    reason: EndReason = "eof"
    error: str | None = None
    via: str = ""
    """The stage that passed this end on (set by the runner): which input of a stage ended."""


StatusName = Literal["connecting", "connected", "stalled", "reconnecting"]


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """A live source's connection state changed (``connecting``, ``connected``, ``stalled``,
    ``reconnecting``); ``detail`` says why (the reason, the attempt and its delay). In order with
    the stream's items, like ``EndOfStream``; it may come before the stream's ``StreamStarted``
    (a camera is ``connecting`` before anything about its media is known)."""

    stream_id: str
    status: StatusName
    detail: str | None = None
    via: str = ""
    """The stage that passed this status on (set by the runner): a stage behind several inputs
    passes each status on once."""


Control = StreamStarted | StreamStatus | EndOfStream
Message = Item | Control


def overdue_ms(capture_time: float, budget_ms: float | None, *, now: float | None = None) -> float | None:
    """How long ago (ms) an item captured at ``capture_time`` (wall clock) was, if that is over
    ``budget_ms``; ``None`` while it is within the budget or there is no budget."""
    if budget_ms is None:
        return None
    age_ms = ((time.time() if now is None else now) - capture_time) * 1000.0
    return age_ms if age_ms > budget_ms else None
