"""stages.annexb: MP4 (avcC/hvcC) packets to Annex B. Checked by decoding the converted packets
with FFmpeg given no extradata at all: the frames must be the ones the original decode gives."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from stages.decode.annexb import START_CODE, AnnexB


def encode(path: Path, codec: str, frames: int = 12) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"g": "5"} if codec == "libx264" else {"x265-params": "keyint=5:log-level=error"}
        for index in range(frames):
            image = np.full((48, 64, 3), 15 * index, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_both_ways(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        name, extradata = stream.codec_context.name, stream.codec_context.extradata
        reference = av.CodecContext.create(name, "r")
        reference.extradata = extradata
        bare = av.CodecContext.create(name, "r")  # no extradata: Annex B must carry everything
        converter = AnnexB(name, extradata)
        expected: list[np.ndarray] = []
        got: list[np.ndarray] = []
        for packet in container.demux(stream):
            if not packet.size:
                continue
            expected += [f.to_ndarray(format="gray") for f in reference.decode(packet)]
            converted = av.Packet(converter.convert(bytes(packet), keyframe=packet.is_keyframe))
            converted.pts = packet.pts
            got += [f.to_ndarray(format="gray") for f in bare.decode(converted)]
        expected += [f.to_ndarray(format="gray") for f in reference.decode(None)]
        got += [f.to_ndarray(format="gray") for f in bare.decode(None)]
    return expected, got


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_converted_packets_decode_to_the_same_frames_without_extradata(tmp_path, codec):
    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg has no {codec}")
    expected, got = decode_both_ways(encode(tmp_path / "clip.mp4", codec))
    assert len(got) == len(expected) == 12
    assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))


def test_parameter_sets_go_before_keyframes_only(tmp_path):
    with av.open(str(encode(tmp_path / "clip.mp4", "libx264"))) as container:
        stream = container.streams.video[0]
        converter = AnnexB("h264", stream.codec_context.extradata)
        packets = [p for p in container.demux(stream) if p.size]
    assert converter.length_size == 4 and converter.parameter_sets.startswith(START_CODE)
    key = converter.convert(bytes(packets[0]), keyframe=True)
    other = converter.convert(bytes(packets[1]), keyframe=False)
    assert key.startswith(converter.parameter_sets)
    assert other.startswith(START_CODE) and not other.startswith(converter.parameter_sets)


def test_annex_b_extradata_passes_packets_through():
    sps_pps = START_CODE + b"\x67\x42" + START_CODE + b"\x68\xce"
    converter = AnnexB("h264", sps_pps)
    assert converter.convert(START_CODE + b"\x65\x88", keyframe=True) == sps_pps + START_CODE + b"\x65\x88"


def test_bad_input_is_a_value_error_saying_what():
    with pytest.raises(ValueError, match="not 'vp8'"):
        AnnexB("vp8", None)
    with pytest.raises(ValueError, match="neither avcC"):
        AnnexB("h264", b"\x02\x00\x00\x00\x00\x00\x00")
    converter = AnnexB("h264", bytes([1, 66, 0, 30, 0xFF, 0xE0, 0]))
    with pytest.raises(ValueError, match="overruns"):
        converter.convert(b"\x00\x00\x00\x09abc", keyframe=False)
