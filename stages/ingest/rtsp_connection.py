"""One RTSP session over FFmpeg (PyAV): open it, read its packets, close it.

Every method blocks; the ``rtsp`` source runs them in the thread pool.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av

from pipeline.media import AudioCodecParams, TrackKind, VideoCodecParams

from .rtsp_params import RtspParams


class RtspConnection:
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


def codec_change(first: RtspConnection, now: RtspConnection) -> str | None:
    for kind, before, after in (("video", first.video, now.video), ("audio", first.audio, now.audio)):
        # A track that comes or goes is no reason to give up (the decoders see packets or not).
        if before is not None and after is not None and before.codec != after.codec:
            return f"the {kind} codec changed from {before.codec} to {after.codec}"
    return None
