"""stages.audio: audio packets to fixed windows of mono float32, driven through the Stage hooks on
real media written and demuxed by PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.errors import StreamError
from pipeline.media import AudioChunk, AudioCodecParams, EncodedPacket, EndOfStream, Item, StreamInfo, VideoFrame
from pipeline.tensors import PreparedTensor
from stages.decode.audio_decode import AudioDecode, AudioDecodeParams

RATE = 16000


def write_audio(path: Path, samples: np.ndarray, rate: int, codec: str = "pcm_s16le", start: int = 0) -> Path:
    """``samples``: channels x n int16 (1 or 2 channels), written with ``codec`` from pts ``start``."""
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T.reshape(1, -1)), "s16", layout)
        frame.sample_rate, frame.pts = rate, start
        # Encoders take frames of their own size: let a resampler cut them.
        size = stream.codec_context.frame_size or 1024
        cutter = av.AudioResampler(stream.codec_context.format.name, layout, rate, frame_size=size)
        packets = [p for f in [*cutter.resample(frame), *cutter.resample(None)] for p in stream.encode(f)]
        for packet in [*packets, *stream.encode(None)]:
            container.mux(packet)
    return path


def demux(path: Path, stream_id: str = "mic") -> tuple[StreamInfo, list[EncodedPacket]]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        codec = stream.codec_context
        audio = AudioCodecParams(codec.name, codec.sample_rate, codec.channels, codec.extradata)
        info = StreamInfo(stream_id=stream_id, uri=str(path), live=False, audio=audio)
        packets = [
            EncodedPacket(p, p.pts, stream.time_base, bool(p.is_keyframe), "audio")
            for p in container.demux(stream)
            if p.size
        ]
    return info, packets


def packet_item(packet: EncodedPacket, stream_id: str = "mic", capture_time: float = 1000.0) -> Item:
    return Item(stream_id=stream_id, media=packet, capture_time=capture_time)


async def started(make_ctx, **params) -> AudioDecode:
    stage = AudioDecode("audio", AudioDecodeParams(**params))
    await stage.start(make_ctx("audio"))
    return stage


async def decode_all(stage: AudioDecode, info: StreamInfo, packets: list[EncodedPacket]) -> list[Item]:
    await stage.on_stream_added(info)
    items: list[Item] = []
    for index, packet in enumerate(packets):
        items += await stage.process(packet_item(packet, info.stream_id, 1000.0 + index))
    items += await stage.on_stream_ended(EndOfStream(info.stream_id))
    return items


def joined(items: list[Item]) -> np.ndarray:
    chunks = [item.media for item in items]
    assert all(isinstance(chunk, AudioChunk) for chunk in chunks)
    return np.concatenate([chunk.data[0] for chunk in chunks if isinstance(chunk, AudioChunk)])


@pytest.fixture()
def ramp_wav(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """1700 samples of 16 kHz mono PCM (3 whole 512-sample windows and 164 more), a known ramp."""
    samples = (np.arange(1700, dtype=np.int32) * 17 % 20000 - 10000).astype(np.int16)
    return write_audio(tmp_path / "ramp.wav", samples[None], RATE), samples.astype(np.float32) / 32768


# --- windows --------------------------------------------------------------------------------------


async def test_windows_carry_every_sample_once_with_the_previous_context_first(make_ctx, ramp_wav):
    path, expected = ramp_wav
    info, packets = demux(path)
    stage = await started(make_ctx)
    items = await decode_all(stage, info, packets)

    assert [item.seq for item in items] == [0, 1, 2, 3]
    assert stage.ctx.stats.stream("mic").decoded == 4
    assert all(item.stream_id == "mic" for item in items)
    chunks = [item.media for item in items]
    assert all(isinstance(c, AudioChunk) for c in chunks)
    assert [c.pts for c in chunks] == [0, 512, 1024, 1536]
    assert all(c.time_base == Fraction(1, RATE) and c.sample_rate == RATE for c in chunks)
    assert all(c.data.dtype == np.float32 and c.data.shape == (1, 512) for c in chunks[:3])
    # The last window is partial: its media holds the real samples only, its tensor is zero-padded.
    assert chunks[3].data.shape == (1, 1700 - 3 * 512)
    # Same rate, mono, s16 -> float: the samples come through exactly, once each, in order.
    np.testing.assert_allclose(joined(items), expected, atol=1e-6)

    tensors = [item.tensors["audio"] for item in items]
    assert all(isinstance(t, PreparedTensor) and t.geometry is None for t in tensors)
    assert all(t.data.shape == (64 + 512,) and t.data.dtype == np.float32 for t in tensors)
    np.testing.assert_array_equal(tensors[0].data[:64], np.zeros(64, np.float32))  # stream start: silence
    for index, tensor in enumerate(tensors):
        new = expected[index * 512 : (index + 1) * 512]
        np.testing.assert_allclose(tensor.data[64 : 64 + new.size], new, atol=1e-6)
        if index:
            np.testing.assert_array_equal(tensor.data[:64], tensors[index - 1].data[-64:])
    np.testing.assert_array_equal(tensors[3].data[64 + 164 :], np.zeros(512 - 164, np.float32))
    # Windows take the capture time of the packet that completed them; the flushed one the last's.
    assert items[-1].capture_time == 1000.0 + len(packets) - 1


async def test_window_and_context_sizes_are_parameters(make_ctx, ramp_wav):
    path, expected = ramp_wav
    info, packets = demux(path)
    stage = await started(make_ctx, window=1000, context=1200)
    items = await decode_all(stage, info, packets)
    assert [item.media.pts for item in items] == [0, 1000]
    first, second = (item.tensors["audio"].data for item in items)
    assert first.shape == second.shape == (2200,)
    # A context longer than a window reaches back over several windows (zeros before the start).
    np.testing.assert_array_equal(first[:1200], np.zeros(1200, np.float32))
    np.testing.assert_allclose(second[:1200], np.concatenate([np.zeros(200, np.float32), expected[:1000]]), atol=1e-6)
    np.testing.assert_allclose(second[1200:1900], expected[1000:], atol=1e-6)


async def test_no_context(make_ctx, ramp_wav):
    path, expected = ramp_wav
    info, packets = demux(path)
    items = await decode_all(await started(make_ctx, context=0), info, packets)
    assert all(item.tensors["audio"].data.shape == (512,) for item in items)
    np.testing.assert_allclose(items[1].tensors["audio"].data, expected[512:1024], atol=1e-6)


async def test_resamples_and_downmixes_aac_stereo_48k_to_mono_16k(make_ctx, tmp_path):
    # 1 s: a 440 Hz tone on the left, silence on the right, AAC in MP4 (as the sample's audio is).
    seconds, rate = 1.0, 48000
    t = np.arange(int(seconds * rate)) / rate
    left = (0.5 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    stereo = np.stack([left, np.zeros_like(left)])
    info, packets = demux(write_audio(tmp_path / "tone.mp4", stereo, rate, codec="aac"))
    assert (info.audio.codec, info.audio.sample_rate, info.audio.channels) == ("aac", rate, 2)
    assert packets[0].pts < 0  # the encoder's priming samples, dropped by the decoder

    items = await decode_all(await started(make_ctx), info, packets)
    audio = joined(items)
    # The decoder drops the priming, so the first window starts at 0 (the stream's first audio pts).
    assert items[0].media.pts == 0
    assert abs(audio.size - seconds * RATE) <= 1024 * RATE / rate  # AAC pads its last frame
    middle = audio[2000:14000]
    spectrum = np.abs(np.fft.rfft(middle))
    assert np.fft.rfftfreq(middle.size, 1 / RATE)[spectrum.argmax()] == pytest.approx(440, abs=2)
    # Mono is the mean of the channels: half the left channel's amplitude (FFmpeg's own downmix
    # would give 1/sqrt(2) of it, and more than full scale for loud correlated channels).
    assert np.abs(middle).max() == pytest.approx(0.25, rel=0.1)


async def test_pts_count_from_the_first_audio_pts(make_ctx, tmp_path):
    # Audio that starts 1 s into the file: windows keep that media time, counted in samples.
    tone = (1000 * np.sin(np.arange(8000) / 5)).astype(np.int16)[None]
    info, packets = demux(write_audio(tmp_path / "late.mkv", tone, 16000, codec="flac", start=16000))
    assert packets[0].pts * packets[0].time_base == 1
    items = await decode_all(await started(make_ctx), info, packets)
    assert [item.media.pts for item in items] == [16000 + 512 * i for i in range(len(items))]
    assert items[0].media.time_s == 1.0
    assert sum(item.media.data.shape[1] for item in items) == 8000


# --- several streams, other media, errors -------------------------------------------------------


async def test_streams_are_windowed_independently(make_ctx, ramp_wav):
    path, expected = ramp_wav
    info, packets = demux(path)
    other = StreamInfo("other", info.uri, False, audio=info.audio)
    stage = await started(make_ctx)
    await stage.on_stream_added(info)
    await stage.on_stream_added(other)
    got: dict[str, list[Item]] = {"mic": [], "other": []}
    for packet in packets:
        for sid in got:
            got[sid] += await stage.process(packet_item(packet, sid))
    for sid in got:
        got[sid] += await stage.on_stream_ended(EndOfStream(sid))
    for sid, items in got.items():
        assert [item.seq for item in items] == [0, 1, 2, 3]
        np.testing.assert_allclose(joined(items), expected, atol=1e-6)
        assert stage.ctx.stats.stream(sid).decoded == 4


async def test_video_packets_are_ignored_and_not_counted(make_ctx, ramp_wav):
    path, _ = ramp_wav
    info, _ = demux(path)
    stage = await started(make_ctx)
    await stage.on_stream_added(info)
    video = EncodedPacket(av.Packet(b"\x00\x00\x00\x01"), 0, Fraction(1, 90000), True, "video")
    assert list(await stage.process(packet_item(video))) == []
    counters = stage.ctx.stats.stream("mic")
    assert (counters.decoded, counters.dropped, counters.packets_dropped, counters.consumed) == (0, 0, 0, 0)


async def test_decoded_audio_passes_through_and_decoded_video_is_left_to_decode(make_ctx):
    stage = await started(make_ctx)
    chunk = AudioChunk(np.zeros((1, 4), np.float32), 0, Fraction(1, 16000), 16000)
    item = Item(stream_id="cam", media=chunk, capture_time=0.0, seq=3)
    assert list(await stage.process(item)) == [item]
    # A source that decodes itself (whip) sends decoded frames: decode passes them on, not this.
    frame = VideoFrame(np.zeros((2, 2, 3), np.uint8), 0, Fraction(1, 30), 2, 2)
    assert list(await stage.process(Item(stream_id="cam", media=frame, capture_time=0.0, seq=4))) == []


async def test_audio_packet_for_a_stream_without_audio_is_a_stream_error(make_ctx, ramp_wav):
    path, _ = ramp_wav
    _, packets = demux(path)
    stage = await started(make_ctx)
    await stage.on_stream_added(StreamInfo("video-only", "x://", live=False))
    with pytest.raises(StreamError) as info:
        await stage.process(packet_item(packets[0], "video-only"))
    assert info.value.stream_id == "video-only"
    assert list(await stage.on_stream_ended(EndOfStream("video-only"))) == []


async def test_stream_with_no_audio_at_all_ends_with_no_windows(make_ctx, ramp_wav):
    path, _ = ramp_wav
    info, _ = demux(path)
    stage = await started(make_ctx)
    await stage.on_stream_added(info)
    assert list(await stage.on_stream_ended(EndOfStream("mic", "stopped"))) == []


async def test_corrupt_packets_are_counted_then_end_the_stream(make_ctx, tmp_path):
    tone = (1000 * np.sin(np.arange(16000) / 5)).astype(np.int16)[None]
    info, packets = demux(write_audio(tmp_path / "tone.mp4", tone, 16000, codec="aac"))
    stage = await started(make_ctx, max_consecutive_errors=2)
    await stage.on_stream_added(info)
    garbage = EncodedPacket(av.Packet(b"\xff" * 64), 0, packets[0].time_base, True, "audio")

    assert list(await stage.process(packet_item(garbage))) == []
    counters = stage.ctx.stats.stream("mic")
    assert counters.packets_dropped == 1
    for packet in packets[:3]:  # good packets reset the run of errors
        await stage.process(packet_item(packet))
    assert list(await stage.process(packet_item(garbage))) == []
    with pytest.raises(StreamError, match="corrupt audio: 2 packets in a row failed to decode"):
        await stage.process(packet_item(garbage))
    assert counters.packets_dropped == 3
    assert counters.dropped == 0  # packets are not windows
    await stage.on_stream_ended(EndOfStream("mic", "error"))  # flushes and releases the codec


def test_params_validation():
    params = AudioDecodeParams()
    assert (params.sample_rate, params.window, params.context, params.max_consecutive_errors) == (16000, 512, 64, 10)
    for bad in ({"window": 0}, {"context": -1}, {"sample_rate": 0}, {"max_consecutive_errors": 0}, {"rate": 8000}):
        with pytest.raises(ValidationError):
            AudioDecodeParams.model_validate(bad)
