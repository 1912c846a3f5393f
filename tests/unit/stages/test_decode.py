"""stages.decode: H.264 packets to BGR frames with PyAV, driven directly through the Stage hooks."""

from __future__ import annotations

import asyncio
import re
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.errors import StreamError
from pipeline.media import EncodedPacket, EndOfStream, Item, StreamInfo, VideoCodecParams, VideoFrame
from pipeline.stage import Stage
from stages.decode.decode import Decode, DecodeParams

FRAMES = 10
SIZE = 64


@pytest.fixture()
def h264_file(tmp_path: Path) -> Path:
    """A 64x64, 10-frame H.264 MP4 whose frame i is a flat gray of level 20 * i."""
    path = tmp_path / "tiny.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for index in range(FRAMES):
            image = np.full((SIZE, SIZE, 3), 20 * index, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def demux(path: Path) -> tuple[StreamInfo, list[EncodedPacket]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context
        info = StreamInfo(
            stream_id="cam",
            uri=str(path),
            live=False,
            video=VideoCodecParams(codec.name, codec.width, codec.height, codec.extradata),
        )
        packets = [
            EncodedPacket(p, p.pts, stream.time_base, bool(p.is_keyframe)) for p in container.demux(stream) if p.size
        ]
    return info, packets


def packet_item(packet: EncodedPacket, stream_id: str = "cam") -> Item:
    return Item(stream_id=stream_id, media=packet, capture_time=1000.0 + (packet.pts or 0))


async def started_decoder(make_ctx, **params) -> Decode:
    stage = Decode("decode", DecodeParams(**params))
    await stage.start(make_ctx("decode"))
    return stage


async def test_decodes_every_frame_in_order_with_flush(make_ctx, h264_file):
    info, packets = demux(h264_file)
    assert len(packets) == FRAMES
    decoder = await started_decoder(make_ctx)
    await decoder.on_stream_added(info)

    items: list[Item] = []
    for packet in packets:
        items.extend(await decoder.process(packet_item(packet)))
    held_back = FRAMES - len(items)
    items.extend(await decoder.on_stream_ended(EndOfStream("cam")))

    assert held_back > 0  # the decoder keeps frames (B-frames, threads) until it is flushed
    assert [item.seq for item in items] == list(range(FRAMES))
    assert decoder.ctx.stats.stream("cam").decoded == FRAMES
    pts = [item.media.pts for item in items]
    assert pts == sorted(pts)
    for index, item in enumerate(items):
        frame = item.media
        assert isinstance(frame, VideoFrame)
        assert item.stream_id == "cam"
        assert (frame.width, frame.height) == (SIZE, SIZE)
        assert frame.data is None  # converted by whoever needs the pixels first
        assert frame.bgr().shape == (SIZE, SIZE, 3)
        assert frame.data is frame.bgr() and frame.decoded is None  # once
        assert frame.data.dtype == np.uint8
        assert frame.time_base == packets[0].time_base
        assert abs(int(frame.data.mean()) - 20 * index) <= 3  # the right picture, in display order
        # Each frame carries the capture time of the packet it came from (matched by pts).
        assert item.capture_time == 1000.0 + frame.pts


async def test_a_few_packets_then_end_flushes_the_rest(make_ctx, h264_file):
    info, packets = demux(h264_file)
    decoder = await started_decoder(make_ctx, threads=1)
    await decoder.on_stream_added(info)
    items: list[Item] = []
    for packet in packets[:4]:
        items.extend(await decoder.process(packet_item(packet)))
    items.extend(await decoder.on_stream_ended(EndOfStream("cam", "stopped")))
    assert [item.seq for item in items] == list(range(len(items)))
    assert 1 <= len(items) <= 4
    assert decoder.ctx.stats.stream("cam").decoded == len(items)
    # The stream's state is gone: ending it again yields nothing.
    assert list(await decoder.on_stream_ended(EndOfStream("cam"))) == []


async def test_streams_are_decoded_independently(make_ctx, h264_file):
    info, packets = demux(h264_file)
    other = StreamInfo("other", info.uri, info.live, info.video)
    decoder = await started_decoder(make_ctx)
    await decoder.on_stream_added(info)
    await decoder.on_stream_added(other)
    seqs: dict[str, list[int]] = {"cam": [], "other": []}
    for packet in packets:
        for sid in ("cam", "other"):
            seqs[sid] += [i.seq for i in await decoder.process(packet_item(packet, sid))]
    for sid in ("cam", "other"):
        seqs[sid] += [i.seq for i in await decoder.on_stream_ended(EndOfStream(sid))]
    assert seqs == {"cam": list(range(FRAMES)), "other": list(range(FRAMES))}


async def test_packet_for_a_stream_without_video_is_a_stream_error(make_ctx, h264_file):
    _, packets = demux(h264_file)
    decoder = await started_decoder(make_ctx)
    await decoder.on_stream_added(StreamInfo("audio-only", "x://", live=False))
    with pytest.raises(StreamError) as info:
        await decoder.process(packet_item(packets[0], "audio-only"))
    assert info.value.stream_id == "audio-only"


@pytest.mark.parametrize("track", ["video", "audio"])
async def test_a_codec_this_ffmpeg_cannot_decode_is_a_stream_error_naming_it(make_ctx, track):
    from pipeline.media import AudioCodecParams
    from stages.decode.audio_decode import AudioDecode, AudioDecodeParams

    # a64_multi: FFmpeg encodes it but has no decoder for it (a camera may announce any codec).
    if track == "video":
        decoder: Stage = await started_decoder(make_ctx, device="cpu")
        info = StreamInfo("odd", "rtsp://cam", live=True, video=VideoCodecParams("a64_multi", 64, 48))
    else:
        decoder = AudioDecode("audio_decode", AudioDecodeParams())
        await decoder.start(make_ctx("audio_decode"))
        info = StreamInfo("odd", "rtsp://cam", live=True, audio=AudioCodecParams("a64_multi", 16000, 1))
    with pytest.raises(StreamError, match=f"no FFmpeg decoder for {track} codec 'a64_multi'") as raised:
        await decoder.on_stream_added(info)
    assert raised.value.stream_id == "odd"
    assert "odd" not in decoder._streams


async def test_non_packets_pass_through(make_ctx):
    decoder = await started_decoder(make_ctx)
    frame = VideoFrame(np.zeros((2, 2, 3), np.uint8), 0, Fraction(1, 30), 2, 2)
    item = Item(stream_id="cam", media=frame, capture_time=0.0, seq=3)
    assert list(await decoder.process(item)) == [item]


async def test_corrupt_packets_are_counted_then_end_the_stream(make_ctx, h264_file):
    info, packets = demux(h264_file)
    # One decoder thread: errors surface on the packet that caused them (frame threads report late).
    decoder = await started_decoder(make_ctx, max_consecutive_errors=2, threads=1)
    await decoder.on_stream_added(info)
    garbage = EncodedPacket(av.Packet(b"\xff" * 64), 0, packets[0].time_base, False)

    assert list(await decoder.process(packet_item(garbage))) == []
    assert decoder.ctx.stats.stream("cam").packets_dropped == 1
    # A good packet resets the run of errors.
    await decoder.process(packet_item(packets[0]))
    assert list(await decoder.process(packet_item(garbage))) == []
    with pytest.raises(StreamError) as failed:
        await decoder.process(packet_item(garbage))
    # FFmpeg's words for a person, without its errno and C function names.
    assert (
        failed.value.message
        == "corrupt video: 2 packets in a row failed to decode (Invalid data found when processing input)"
    )
    assert decoder.ctx.stats.stream("cam").packets_dropped == 3
    await decoder.on_stream_ended(EndOfStream("cam", "error"))  # flushes and releases the codec


def test_params_validation():
    with pytest.raises(ValueError):
        DecodeParams(threads=-1)
    with pytest.raises(ValueError):
        DecodeParams(max_consecutive_errors=0)
    with pytest.raises(ValueError):
        DecodeParams.model_validate({"device": "cuda"})


async def test_audio_packets_are_ignored_without_counting_a_drop(make_ctx, h264_file):
    info, packets = demux(h264_file)
    decoder = await started_decoder(make_ctx)
    await decoder.on_stream_added(info)
    audio = EncodedPacket(av.Packet(b"\xff" * 64), 0, Fraction(1, 48000), True, "audio")
    items: list[Item] = []
    for packet in packets[:5]:
        items.extend(await decoder.process(packet_item(packet)))
        assert list(await decoder.process(packet_item(audio))) == []  # interleaved, as a file source sends them
    for packet in packets[5:]:
        items.extend(await decoder.process(packet_item(packet)))
    items.extend(await decoder.on_stream_ended(EndOfStream("cam")))
    assert [item.seq for item in items] == list(range(FRAMES))
    counters = decoder.ctx.stats.stream("cam")
    assert (counters.decoded, counters.dropped, counters.packets_dropped) == (FRAMES, 0, 0)


async def test_audio_packets_of_a_stream_without_video_are_ignored_too(make_ctx):
    decoder = await started_decoder(make_ctx)
    await decoder.on_stream_added(StreamInfo("mic", "x://", live=False))  # audio only: no video codec
    audio = EncodedPacket(av.Packet(b"\x00" * 16), 0, Fraction(1, 16000), True, "audio")
    assert list(await decoder.process(packet_item(audio, "mic"))) == []
    assert list(await decoder.on_stream_ended(EndOfStream("mic"))) == []
    assert decoder.ctx.stats.stream("mic").packets_dropped == 0


async def test_a_frame_carries_its_packets_timings_and_its_time_in_the_decoder(make_ctx, h264_file):
    info, packets = demux(h264_file)
    decoder = await started_decoder(make_ctx)
    await decoder.on_stream_added(info)
    items: list[Item] = []
    for packet in packets:
        sent = packet_item(packet)
        sent.timings_ms.update({"queue": 2.0, "blocked": 3.0})  # what its packet waited upstream
        items.extend(await decoder.process(sent))
    items.extend(await decoder.on_stream_ended(EndOfStream("cam")))
    assert len(items) == FRAMES
    for item in items:
        assert item.capture_time == 1000.0 + item.media.pts  # its own packet's, found by pts
        assert item.timings_ms["queue"] == 2.0 and item.timings_ms["blocked"] == 3.0
        assert item.timings_ms["decode"] > 0


async def test_frames_over_the_budget_are_decoded_but_dropped_unconverted(make_ctx, h264_file, monkeypatch):
    info, packets = demux(h264_file)
    decoder = await started_decoder(make_ctx, latency_budget_ms=100)
    await decoder.on_stream_added(info)
    converted: list[int] = []
    real = av.VideoFrame.to_ndarray

    def spy(frame, *args, **kwargs):
        converted.append(frame.pts)
        return real(frame, *args, **kwargs)

    monkeypatch.setattr(av.VideoFrame, "to_ndarray", spy)
    items: list[Item] = []
    now = time.time()
    for index, packet in enumerate(packets):
        item = packet_item(packet)
        item.capture_time = now - 1.0 if index < 5 else now + 60.0  # the first five are a second old
        items.extend(await decoder.process(item))
    items.extend(await decoder.on_stream_ended(EndOfStream("cam")))
    counters = decoder.ctx.stats.stream("cam")
    assert counters.decoded == FRAMES
    late = counters.drops.get("late:decode", 0)
    assert late > 0 and late + len(items) == FRAMES
    assert converted == []  # nothing is converted until a stage asks for the pixels
    # Every packet was decoded (references kept): the frames that came through are the right ones.
    for item in items:
        level = 20 * item.seq
        assert abs(float(item.media.bgr().mean()) - level) < 6
    assert len(converted) == len(items)  # a dropped frame never became pixels


async def test_packets_started_together_decode_in_order_per_stream(make_ctx, h264_file):
    """As the stage runner starts them: every packet of two streams in flight at once. Each
    stream's packets still reach its codec one at a time in arrival order (else frames would be
    wrong or lost), while the two streams decode side by side."""
    info, packets = demux(h264_file)
    other = StreamInfo("other", info.uri, info.live, info.video)
    decoder = await started_decoder(make_ctx, streams_at_once=8)
    assert decoder.max_in_flight == 8
    await decoder.on_stream_added(info)
    await decoder.on_stream_added(other)
    calls = [decoder.process(packet_item(packet, sid)) for packet in packets for sid in ("cam", "other")]
    outcomes = await asyncio.gather(*calls)
    frames: dict[str, list[Item]] = {"cam": [], "other": []}
    for (_, sid), items in zip([(p, s) for p in packets for s in ("cam", "other")], outcomes, strict=True):
        frames[sid] += items
    for sid in ("cam", "other"):
        frames[sid] += await decoder.on_stream_ended(EndOfStream(sid))
        assert [i.seq for i in frames[sid]] == list(range(FRAMES))
        levels = [int(np.median(i.media.bgr())) for i in frames[sid]]
        assert all(abs(level - 20 * index) <= 3 for index, level in enumerate(levels)), levels


async def test_device_gpu_without_nvdec_fails_at_start_naming_why(make_ctx):
    from pipeline.errors import ConfigError
    from stages.decode.nvdec import nvdec_unusable

    problem = nvdec_unusable()
    if problem is None:
        pytest.skip("NVDEC is usable here: tests/gpu covers it")
    stage = Decode("decode", DecodeParams(device="gpu"))
    with pytest.raises(ConfigError, match=re.escape(f"params.device is gpu, but NVDEC is not usable: {problem}")):
        await stage.start(make_ctx("decode"))


async def test_device_auto_decodes_on_the_cpu_where_nvdec_is_missing(make_ctx, h264_file, caplog):
    from stages.decode.nvdec import nvdec_unusable

    problem = nvdec_unusable()
    if problem is None:
        pytest.skip("NVDEC is usable here: tests/gpu covers it")
    caplog.set_level("INFO")
    info, packets = demux(h264_file)
    decoder = await started_decoder(make_ctx, device="auto")
    await decoder.on_stream_added(info)
    frames = [i for packet in packets for i in await decoder.process(packet_item(packet))]
    frames += await decoder.on_stream_ended(EndOfStream("cam"))
    assert len(frames) == FRAMES and isinstance(frames[0].media.bgr(), np.ndarray)
    assert f"decoding on the CPU ({problem})" in caplog.text


async def test_a_stream_the_source_decoded_gets_no_decoder_and_passes_through(make_ctx):
    info = StreamInfo("peer", "whip:", True, VideoCodecParams("vp8", 64, 48, decoded=True))
    decoder = await started_decoder(make_ctx)
    await decoder.on_stream_added(info)
    assert "peer" not in decoder._streams  # nothing opened for the wire codec
    frame = VideoFrame(data=np.zeros((48, 64, 3), np.uint8), pts=0, time_base=Fraction(1, 90000), width=64, height=48)
    item = Item(stream_id="peer", media=frame, capture_time=0.0, seq=0)
    assert await decoder.process(item) == (item,)
    assert await decoder.on_stream_ended(EndOfStream("peer")) == ()


class _Consumer(Stage):
    """A stage that says whether it works on device arrays."""

    def __init__(self, on_device: bool) -> None:
        super().__init__("consumer", None)
        self.on_device = on_device

    def takes_device_arrays(self) -> bool:
        return self.on_device


@pytest.mark.parametrize(
    ("on_device", "where"), [(False, "the CPU (no stage it feeds runs on the GPU)"), (True, "NVDEC")]
)
async def test_device_auto_takes_nvdec_only_for_a_consumer_on_the_gpu(make_ctx, monkeypatch, caplog, on_device, where):
    """Frames decoded on the GPU for a model on the CPU would each be copied back to the host."""
    monkeypatch.setattr("stages.decode.decode.nvdec_unusable", lambda codec=None: None)  # as where NVDEC works
    caplog.set_level("INFO")
    stage = Decode("decode", DecodeParams(device="auto"))
    await stage.start(make_ctx("decode", consumers=(_Consumer(on_device),)))
    assert f"decoding on {where}" in caplog.text


async def test_prepare_takes_device_arrays_when_a_stage_it_feeds_does(make_ctx):
    from stages.vision.prepare import Prepare, PrepareParams

    for on_device in (False, True):
        prepare = Prepare("prep", PrepareParams(model="pp-ocrv4-det"))
        await prepare.start(make_ctx("prep", consumers=(_Consumer(on_device),)))
        assert prepare.takes_device_arrays() is on_device
