"""Reading one media file's packets, blocking: the ``file`` source runs it on its own thread."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from pipeline.media import AudioCodecParams, TrackKind, VideoCodecParams


class Demuxer:
    """A blocking packet reader for one file's first video and/or audio track (runs in the stream's
    own thread: ``pipeline.sourcethread``)."""

    def __init__(self, path: Path, tracks: Sequence[TrackKind], input_format: str | None = None) -> None:
        self.path = path
        self.input_format = input_format
        if path.is_file() and path.stat().st_size == 0:
            raise ValueError("the file is empty (0 bytes)")
        self.container: Any = av.open(str(path), mode="r", format=input_format)
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
        self.container = av.open(str(self.path), mode="r", format=self.input_format)
        reopened = list(self.container.streams)
        self.streams = {kind: reopened[index] for index, kind in self.kinds.items()}
        self._packets = self.container.demux(list(self.streams.values()))

    def seek(self, kind: TrackKind, at_s: Fraction) -> bool:
        """Go to the keyframe at or before ``at_s`` (seconds into the file, on track ``kind``).
        False, and still at the start, where the file cannot seek (a raw elementary stream: no
        timestamps to find a place by)."""
        stream = self.streams[kind]
        try:
            self.container.seek(max(0, int(at_s / self.time_bases[kind])), stream=stream, backward=True)
        except (OSError, av.FFmpegError):
            self.rewind()
            return False
        self._packets = self.container.demux(list(self.streams.values()))
        return True

    def close(self) -> None:
        self.container.close()


def _frame_duration(stream: Any, time_base: Fraction) -> int:
    """Ticks of one frame (video: 1 / the header's frame rate, 25 fps if it says none; audio: one
    packet is not one frame, so 0 and its own ``duration`` counts)."""
    if stream.type != "video":
        return 0
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    return max(1, round(1 / (Fraction(rate) * time_base)))
