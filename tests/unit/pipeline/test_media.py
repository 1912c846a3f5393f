"""pipeline.media: timestamps as integer pts in a Fraction time base, and the mutable Item."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest

from pipeline.media import (
    AudioChunk,
    AudioCodecParams,
    EncodedPacket,
    EndOfStream,
    Item,
    StreamInfo,
    StreamStarted,
    VideoCodecParams,
    VideoFrame,
)


def video_frame(pts: int = 3003, time_base: Fraction = Fraction(1, 30000)) -> VideoFrame:
    return VideoFrame(np.zeros((4, 6, 3), np.uint8), pts=pts, time_base=time_base, width=6, height=4)


@pytest.mark.parametrize(
    ("pts", "time_base", "seconds"),
    [
        (0, Fraction(1, 90000), 0.0),
        (3003, Fraction(1, 30000), 0.1001),
        (512 * 25, Fraction(1, 12800), 1.0),
        (-1024, Fraction(1, 12800), -0.08),
        (7, Fraction(1, 3), 7 / 3),
    ],
)
def test_video_frame_time_s_is_pts_times_time_base(pts, time_base, seconds):
    assert video_frame(pts, time_base).time_s == pytest.approx(seconds)


def test_time_s_is_computed_exactly_then_rounded_once():
    # pts * time_base in Fraction, one conversion to float: no error from a float time base.
    assert video_frame(3003, Fraction(1, 30000)).time_s == 0.1001  # 3003 * float(1/30000) is 0.10010000000000001
    frame = video_frame(pts=3 * 10**12 + 1, time_base=Fraction(1, 3))
    assert frame.time_s == float(Fraction(3 * 10**12 + 1, 3))
    assert isinstance(frame.time_s, float)


def test_audio_chunk_time_s():
    chunk = AudioChunk(np.zeros((1, 160), np.float32), pts=48000, time_base=Fraction(1, 16000), sample_rate=16000)
    assert chunk.time_s == 3.0


def test_media_and_control_messages_are_frozen():
    frame = video_frame()
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.pts = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        EndOfStream("cam").reason = "error"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        StreamInfo("cam", "x", live=False).live = True  # type: ignore[misc]


def test_slots_keep_attributes_to_the_declared_ones():
    packet = EncodedPacket(b"", 0, Fraction(1, 25), True)
    with pytest.raises((AttributeError, TypeError)):
        packet.extra = 1  # type: ignore[attr-defined]
    item = Item(stream_id="cam", media=packet, capture_time=0.0)
    with pytest.raises(AttributeError):
        item.extra = 1  # type: ignore[attr-defined]


def test_control_messages():
    info = StreamInfo("cam", "rtsp://camera/1", live=True, video=VideoCodecParams("h264", 640, 360))
    assert StreamStarted(info).stream_id == "cam"
    end = EndOfStream("cam")
    assert (end.reason, end.error) == ("eof", None)
    assert EndOfStream("cam", "error", "boom") == EndOfStream("cam", "error", "boom")
    assert info.video is not None and info.video.extradata is None


def test_packets_say_their_track_and_streams_their_audio():
    assert EncodedPacket(b"", 0, Fraction(1, 25), True).kind == "video"  # what every video source sent so far
    audio = EncodedPacket(b"", -1024, Fraction(1, 48000), True, kind="audio")
    assert (audio.kind, audio.pts, audio.time_base) == ("audio", -1024, Fraction(1, 48000))
    assert StreamInfo("cam", "x", live=False).audio is None
    params = AudioCodecParams("aac", 48000, 2, b"\x11\x90")
    info = StreamInfo("av", "x", live=False, video=VideoCodecParams("h264", 640, 360), audio=params)
    assert (info.audio.codec, info.audio.sample_rate, info.audio.channels) == ("aac", 48000, 2)
    assert AudioCodecParams("pcm_s16le", 16000, 1).extradata is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.channels = 1  # type: ignore[misc]


def test_item_defaults():
    item = Item(stream_id="cam", media=video_frame(), capture_time=12.5)
    assert item.seq == -1  # not a frame yet (a packet): decode numbers frames
    assert (item.tensors, item.results, item.timings_ms) == ({}, {}, {})
    # Each item has dicts of its own.
    other = Item(stream_id="cam", media=video_frame(), capture_time=12.5)
    item.results["x"] = 1
    assert other.results == {}


def test_add_time_accumulates_per_key():
    item = Item(stream_id="cam", media=video_frame(), capture_time=0.0)
    item.add_time("infer", 2.5)
    item.add_time("infer", 1.25)
    item.add_time("queue", 0.5)
    assert item.timings_ms == {"infer": 3.75, "queue": 0.5}


def test_fork_copies_the_dicts_but_shares_the_media():
    original = Item(stream_id="cam", media=video_frame(), capture_time=5.0, seq=7)
    original.tensors["prep"] = "tensor"
    original.results["det"] = {"boxes": []}
    original.add_time("decode", 1.0)

    fork = original.fork()
    assert fork is not original
    assert (fork.stream_id, fork.capture_time, fork.seq) == ("cam", 5.0, 7)
    assert fork.media is original.media  # pixels are never copied behind anyone's back
    assert fork.tensors == original.tensors and fork.tensors is not original.tensors
    assert fork.results == original.results and fork.results is not original.results
    assert fork.timings_ms == original.timings_ms and fork.timings_ms is not original.timings_ms

    # Branches write their own results and timings without seeing each other's.
    fork.results["ocr"] = "text"
    fork.tensors.pop("prep")
    fork.add_time("decode", 2.0)
    original.results["vad"] = []
    assert original.results == {"det": {"boxes": []}, "vad": []}
    assert fork.results == {"det": {"boxes": []}, "ocr": "text"}
    assert original.tensors == {"prep": "tensor"}
    assert (original.timings_ms, fork.timings_ms) == ({"decode": 1.0}, {"decode": 3.0})
