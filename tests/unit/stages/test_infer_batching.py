"""stages.infer with the batcher: results equal unbatched runs, per-stream state stays apart.

Real models: the PP-OCRv4 detector (stateless) and Silero VAD (recurrent, on the committed
espeak-ng speech in samples/speech.flac).
"""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.media import AudioChunk, EndOfStream, Item, StreamInfo
from pipeline.tensors import ModelOutput, PreparedTensor
from stages.infer import Infer, InferParams

CPU = ["CPUExecutionProvider"]
SPEECH = Path(__file__).resolve().parents[3] / "samples" / "speech.flac"
WINDOW, CONTEXT = 512, 64


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """The committed speech sample as 16 kHz mono float32."""
    with av.open(str(SPEECH)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        chunks = [
            frame.to_ndarray()[0] for decoded in container.decode(audio=0) for frame in resampler.resample(decoded)
        ]
    return np.concatenate(chunks).astype(np.float32)


def windows(audio: np.ndarray) -> list[np.ndarray]:
    """Silero's input: 512 new samples with the previous 64 in front (zeros at the start)."""
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio])
    return [padded[i : i + CONTEXT + WINDOW] for i in range(0, len(audio) - WINDOW + 1, WINDOW)]


def audio_item(stream_id: str, seq: int, window: np.ndarray) -> Item:
    chunk = AudioChunk(window[None, CONTEXT:], seq * WINDOW, Fraction(1, 16000), 16000)
    item = Item(stream_id=stream_id, media=chunk, capture_time=time.time(), seq=seq)
    item.tensors["win"] = PreparedTensor(window)
    return item


async def started(make_ctx, model: str, **params) -> Infer:
    stage = Infer("vad", InferParams(model=model, providers=CPU, intra_op_threads=1, **params))
    await stage.start(make_ctx("vad", input_stages=("win",)))
    return stage


async def run_stream(stage: Infer, stream_id: str, chunks: list[np.ndarray], first_seq: int = 0) -> list[float]:
    await stage.on_stream_added(StreamInfo(stream_id=stream_id, uri="test://", live=False))
    probabilities = []
    for seq, window in enumerate(chunks, start=first_seq):
        (item,) = await stage.process(audio_item(stream_id, seq, window))
        output = item.tensors["vad"]
        assert isinstance(output, ModelOutput)
        probabilities.append(float(output.outputs["output"][0]))
    await stage.on_stream_ended(EndOfStream(stream_id))
    return probabilities


async def test_eight_streams_batched_together_each_get_their_single_stream_results(make_ctx, speech):
    chunks = windows(speech)[:120]
    alone_stage = await started(make_ctx, "silero-vad")
    alone = await run_stream(alone_stage, "solo", chunks)
    # The state carries real information: without it the same windows read differently.
    fresh = []
    for seq, window in enumerate(chunks):
        await alone_stage.on_stream_added(StreamInfo(stream_id="x", uri="test://", live=False))
        (item,) = await alone_stage.process(audio_item("x", seq, window))
        fresh.append(float(item.tensors["vad"].outputs["output"][0]))
    assert max(abs(a - b) for a, b in zip(alone, fresh, strict=True)) > 0.1

    shared = await started(make_ctx, "silero-vad", batch={"max_size": 8, "max_delay_ms": 20})
    # Streams start at different offsets so that a mix-up of states would show.
    offsets = [0, 3, 7, 11, 0, 5, 2, 9]
    results = await asyncio.gather(*(run_stream(shared, f"s{i}", chunks[offset:]) for i, offset in enumerate(offsets)))
    assert shared.batcher.batched_items / shared.batcher.batches > 2  # they really shared runs
    for offset, probabilities in zip(offsets, results, strict=True):
        expected = alone if offset == 0 else await run_stream(alone_stage, "solo", chunks[offset:])
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    await shared.stop()
    await alone_stage.stop()


async def test_a_seq_gap_starts_the_state_afresh(make_ctx, speech):
    chunks = windows(speech)[:60]
    stage = await started(make_ctx, "silero-vad")
    await stage.on_stream_added(StreamInfo(stream_id="a", uri="test://", live=False))
    for seq, window in enumerate(chunks[:30]):
        await stage.process(audio_item("a", seq, window))
    after_gap = []
    for seq, window in enumerate(chunks[40:], start=40):  # windows 30..39 were lost upstream
        (item,) = await stage.process(audio_item("a", seq, window))
        after_gap.append(float(item.tensors["vad"].outputs["output"][0]))
    fresh = await run_stream(stage, "b", chunks[40:])
    np.testing.assert_allclose(after_gap, fresh, atol=1e-5)


async def test_batched_detector_outputs_equal_one_at_a_time(make_ctx):
    rng = np.random.default_rng(7)
    tensors = [rng.normal(size=(3, 64, 96)).astype(np.float32) for _ in range(4)]

    async def outputs(stage: Infer) -> list[np.ndarray]:
        items = []
        for i, tensor in enumerate(tensors):
            item = Item(
                stream_id=f"s{i}",
                media=AudioChunk(np.zeros((1, 1), np.float32), 0, Fraction(1), 1),
                capture_time=time.time(),
                seq=0,
            )
            item.tensors["win"] = PreparedTensor(tensor)
            items.append(item)
        done = await asyncio.gather(*(stage.process(item) for item in items))
        return [next(iter(out.tensors["vad"].outputs.values())) for (out,) in done]

    single = await started(make_ctx, "pp-ocrv4-det")
    batched = await started(make_ctx, "pp-ocrv4-det", batch={"max_size": 4, "max_delay_ms": 50})
    one_by_one, together = await outputs(single), await outputs(batched)
    assert batched.batcher.batches == 1
    for a, b in zip(one_by_one, together, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    await single.stop()
    await batched.stop()


async def test_a_list_of_tensors_gives_a_list_of_outputs_in_order(make_ctx):
    stage = await started(make_ctx, "pp-ocrv4-det", batch={"max_size": 8, "max_delay_ms": 5})
    shapes = [(3, 32, 64), (3, 32, 96), (3, 32, 64)]  # two sizes: they never share a run
    item = Item(
        stream_id="s",
        media=AudioChunk(np.zeros((1, 1), np.float32), 0, Fraction(1), 1),
        capture_time=time.time(),
        seq=0,
    )
    item.tensors["win"] = [PreparedTensor(np.zeros(shape, np.float32)) for shape in shapes]
    (out,) = await stage.process(item)
    found = out.tensors["vad"]
    assert isinstance(found, list)
    assert [o.outputs["sigmoid_0.tmp_0"].shape for o in found] == [(1, 32, 64), (1, 32, 96), (1, 32, 64)]
    assert stage.batcher.batches == 2
    empty = Item(stream_id="s", media=item.media, capture_time=time.time(), seq=1)
    empty.tensors["win"] = []
    (out,) = await stage.process(empty)
    assert out.tensors["vad"] == []
    await stage.stop()


async def test_frames_past_the_latency_budget_are_dropped_before_the_model_and_counted(make_ctx, speech):
    stage = await started(make_ctx, "silero-vad", batch={"max_size": 1, "latency_budget_ms": 100})
    await stage.on_stream_added(StreamInfo(stream_id="live", uri="test://", live=True))
    late = audio_item("live", 0, windows(speech)[0])
    late.capture_time = time.time() - 5.0  # captured 5 s ago
    assert await stage.process(late) == ()
    assert stage.ctx.stats.stream("live").drops == {"deadline:vad": 1}
    (fresh,) = await stage.process(audio_item("live", 1, windows(speech)[1]))
    assert "vad" in fresh.tensors
    assert stage.batcher.batches == 1  # the late frame never cost a model run
    await stage.stop()
