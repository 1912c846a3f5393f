"""Decoding on the GPU: NVDEC frames match the CPU decode, and a frame goes from the decoder through
prepare into the model (ONNX Runtime CUDA, I/O binding) without a host copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from pipeline.media import EncodedPacket, EndOfStream, Item, StreamInfo, VideoCodecParams
from stages.decode.decode import Decode, DecodeParams
from stages.decode.nvdec import nvdec_unusable
from stages.infer import Infer, InferParams
from stages.vision.prepare import Prepare, PrepareParams

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")
if nvdec_unusable("h264") is not None:
    pytest.skip(f"NVDEC is not usable: {nvdec_unusable('h264')}", allow_module_level=True)

CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def stream(path: Path) -> tuple[StreamInfo, list[Item]]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        codec = video.codec_context
        info = StreamInfo(
            "gpu", str(path), False, VideoCodecParams(codec.name, codec.width, codec.height, codec.extradata)
        )
        items = [
            Item("gpu", EncodedPacket(p, p.pts, video.time_base, bool(p.is_keyframe)), capture_time=0.0)
            for p in container.demux(video)
            if p.size
        ]
    return info, items


async def decoded(make_ctx: Any, device: str, path: Path) -> list[Item]:
    decoder = Decode("decode", DecodeParams(device=device))  # type: ignore[arg-type]
    await decoder.start(make_ctx("decode"))
    info, packets = stream(path)
    await decoder.on_stream_added(info)
    frames: list[Item] = []
    for packet in packets:
        frames += await decoder.process(packet)
    frames += await decoder.on_stream_ended(EndOfStream("gpu"))
    return frames


async def test_nvdec_frames_match_the_cpu_decode(make_ctx: Any, sample_video: Path) -> None:
    gpu = await decoded(make_ctx, "gpu", sample_video)
    cpu = await decoded(make_ctx, "cpu", sample_video)
    assert len(gpu) == len(cpu) == 250
    assert [i.media.pts for i in gpu] == [i.media.pts for i in cpu]
    for index in range(0, 250, 25):
        device = gpu[index].media.bgr()
        assert hasattr(device, "__cuda_array_interface__")  # decoded into device memory
        assert psnr(cupy.asnumpy(device), cpu[index].media.bgr()) >= 40.0


async def test_decode_to_model_makes_no_host_copy(make_ctx: Any, sample_video: Path) -> None:
    frames = await decoded(make_ctx, "gpu", sample_video)
    prepare = Prepare("prep", PrepareParams(model="pp-ocrv4-det"))
    await prepare.start(make_ctx("prep"))
    infer = Infer("det", InferParams(model="pp-ocrv4-det", providers=CUDA))
    await infer.start(make_ctx("det", input_stages=("prep",)))
    await infer.on_stream_added(StreamInfo("gpu", "test://", False))
    copies: list[str] = []
    real_asnumpy = cupy.asnumpy

    def counting_asnumpy(array: Any, *args: Any, **kwargs: Any) -> Any:
        copies.append("asnumpy")
        return real_asnumpy(array, *args, **kwargs)

    cupy.asnumpy = counting_asnumpy
    try:
        for item in frames[:8]:
            (prepared,) = await prepare.process(item)
            assert hasattr(prepared.tensors["prep"].data, "__cuda_array_interface__")
            await infer.process(prepared)
    finally:
        cupy.asnumpy = real_asnumpy
    assert copies == [] and infer.engine.host_copies == 0  # type: ignore[attr-defined]


async def test_frames_past_their_budget_are_dropped_unconverted(make_ctx: Any, sample_video: Path) -> None:
    """``latency_budget_ms`` holds on NVDEC too: a frame already too old is counted, not converted."""
    decoder = Decode("decode", DecodeParams(device="gpu", latency_budget_ms=50))  # type: ignore[arg-type]
    await decoder.start(make_ctx("decode"))
    info, packets = stream(sample_video)  # captured at time 0: far past any budget
    await decoder.on_stream_added(info)
    frames: list[Item] = []
    for packet in packets:
        frames += await decoder.process(packet)
    frames += await decoder.on_stream_ended(EndOfStream("gpu"))
    assert frames == []
    assert decoder.ctx.stats.stream("gpu").drops == {"late:decode": 250}


async def test_corrupt_packets_count_toward_the_error_limit(make_ctx: Any, sample_video: Path) -> None:
    """An NVDEC or Annex B error is a bad packet, counted like FFmpeg's, not a crash of the stream."""
    from pipeline.errors import StreamError

    decoder = Decode("decode", DecodeParams(device="gpu", max_consecutive_errors=3))  # type: ignore[arg-type]
    await decoder.start(make_ctx("decode"))
    info, packets = stream(sample_video)
    await decoder.on_stream_added(info)
    broken = packets[1]
    payload = bytes(broken.media.payload)
    # A NAL length that overruns the packet: the Annex B conversion refuses it.
    bad = Item("gpu", EncodedPacket(b"\xff\xff\xff\xff" + payload[4:], 1, broken.media.time_base, False), 0.0)
    await decoder.process(packets[0])
    assert await decoder.process(bad) == ()
    assert decoder.ctx.stats.stream("gpu").packets_dropped == 1
    with pytest.raises(StreamError, match="3 packets in a row failed to decode"):
        for _ in range(2):
            await decoder.process(bad)
