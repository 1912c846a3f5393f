"""stages.infer: the real PP-OCRv4 detector run by Prepare then Infer on a frame of the sample."""

from __future__ import annotations

import asyncio
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from pydantic import ValidationError

from pipeline import imaging
from pipeline.batching import Request
from pipeline.errors import ConfigError
from pipeline.media import AudioChunk, Item, StreamInfo, VideoFrame
from pipeline.tensors import ModelOutput, PreparedTensor
from stages.infer import Infer, InferParams
from stages.vision.prepare import Prepare, PrepareParams

MODEL = "pp-ocrv4-det"
OUTPUT = "sigmoid_0.tmp_0"
CPU = ["CPUExecutionProvider"]
SIZE = [192, 320]  # height, width: small (fast), not the card's default, and a multiple of 32


@pytest.fixture(scope="module")
def sample_frame(sample_video: Path) -> VideoFrame:
    """Frame 0 of the sample, BGR as the decode stage gives it."""
    with av.open(str(sample_video)) as container:
        stream = container.streams.video[0]
        frame = next(container.decode(stream))
        image = frame.to_ndarray(format="bgr24")
        return VideoFrame(image, frame.pts, stream.time_base, frame.width, frame.height)


def frame_item(frame: VideoFrame) -> Item:
    return Item(stream_id="cam", media=frame, capture_time=0.0, seq=0)


async def started_infer(make_ctx, *, fed: str = "prep", **params) -> Infer:
    """An infer stage on the CPU, fed by ``fed``: ``prep`` (a prepare stage's tensors) or ``decode``
    (frames, which it prepares itself at ``SIZE``)."""
    if fed == "decode":
        params.setdefault("size", SIZE)
    stage = Infer("det", InferParams(model=MODEL, providers=CPU, intra_op_threads=1, **params))
    await stage.start(make_ctx("det", input_stages=(fed,)))
    return stage


async def test_prepare_then_infer_gives_a_probability_map_of_the_tensor_size(make_ctx, sample_frame):
    infer = await started_infer(make_ctx)
    prepare = Prepare("prep", PrepareParams(model=MODEL, size=SIZE))
    await prepare.start(make_ctx("prep", consumers=(infer,)))
    assert infer.tensor_key == "prep"  # the stage's first input, by default

    (item,) = await prepare.process(frame_item(sample_frame))
    prepared = item.tensors["prep"]
    assert isinstance(prepared, PreparedTensor)
    assert prepared.data.shape == (3, *SIZE)
    (out,) = await infer.process(item)

    assert out is item  # same item, passed on with the model's output added
    assert "prep" not in item.tensors  # the input tensor is consumed, not carried along
    result = item.tensors["det"]
    assert isinstance(result, ModelOutput)
    assert result.model == MODEL
    assert result.geometry == prepared.geometry  # post-processing maps back to frame pixels with it
    assert list(result.outputs) == [OUTPUT]
    probability = result.outputs[OUTPUT]
    assert probability.shape == (1, *SIZE)  # batch dimension removed; HxW of the input tensor
    assert probability.dtype == np.float32
    assert float(probability.min()) >= 0.0 and float(probability.max()) <= 1.0
    # The sample has text: the model finds it ("STREAMGRAPH DEMO" spans x 40..456, y 34..64 of 640x360)...
    geometry = prepared.geometry
    x1, x2 = round(40 * geometry.scale_x), round(456 * geometry.scale_x)
    y1, y2 = round(34 * geometry.scale_y), round(64 * geometry.scale_y)
    assert float(probability[0, y1:y2, x1:x2].max()) > 0.5
    # ...and the frame is mostly background.
    assert float(np.median(probability)) < 0.1
    # The run is in the metrics: one batch of one, with its model time.
    scrape = infer.ctx.metrics.render().decode()
    assert f'streamgraph_batch_size_count{{model="{MODEL}",pipeline="detached",stage="det"}} 1.0' in scrape
    assert f'streamgraph_inference_seconds_count{{model="{MODEL}",pipeline="detached",stage="det"}} 1.0' in scrape


async def test_input_param_picks_the_tensor_to_feed(make_ctx, sample_frame):
    prepare = Prepare("small", PrepareParams(model=MODEL, size=[64, 96]))
    await prepare.start(make_ctx("small"))
    infer = await started_infer(make_ctx, input="small")
    assert infer.tensor_key == "small"
    (item,) = await prepare.process(frame_item(sample_frame))
    (item,) = await infer.process(item)
    assert item.tensors["det"].outputs[OUTPUT].shape == (1, 64, 96)


async def test_item_without_the_tensor_is_a_value_error_naming_the_stage(make_ctx, sample_frame):
    infer = await started_infer(make_ctx)
    chunk = AudioChunk(np.zeros((1, 512), np.float32), 0, Fraction(1, 16_000), 16_000)  # no frame to prepare either
    with pytest.raises(ValueError, match="'prep'"):
        await infer.process(Item(stream_id="cam", media=chunk, capture_time=0.0))
    # Something else under that key (not a prepared tensor) is refused the same way.
    item = frame_item(sample_frame)
    item.tensors["prep"] = np.zeros((3, 64, 64), np.float32)
    with pytest.raises(ValueError, match="no tensor from stage 'prep'"):
        await infer.process(item)
    assert "det" not in item.tensors


def two_input_card(tmp_path: Path) -> Path:
    card = tmp_path / "two-inputs.yaml"
    card.write_text(
        f"""
name: two-inputs
license: MIT
task: test
source: {{path: model.onnx}}
sha256: "{"0" * 64}"
inputs:
  - {{name: image, dtype: float32, shape: [batch, 3, height, width]}}
  - {{name: state, dtype: float32, shape: [2, batch, 128]}}
outputs:
  - {{name: out, dtype: float32, shape: [batch, 1]}}
"""
    )
    return card


def test_check_rejects_a_card_with_two_inputs(tmp_path):
    two_input_card(tmp_path)
    infer = Infer("det", InferParams(model="two-inputs.yaml"))
    with pytest.raises(ConfigError) as info:
        infer.check(tmp_path)  # relative card paths resolve against the config's directory
    assert info.value.path == "params.model"
    assert "'two-inputs' has data inputs ['image', 'state']" in info.value.message


async def test_start_rejects_a_card_with_two_inputs_before_loading_anything(make_ctx, tmp_path):
    card = two_input_card(tmp_path)  # its model file does not even exist
    infer = Infer("det", InferParams(model=str(card)))
    with pytest.raises(ConfigError, match="has data inputs"):
        await infer.start(make_ctx("det", input_stages=("prep",)))


def test_check_accepts_the_real_card_and_rejects_an_unknown_one(tmp_path):
    Infer("det", InferParams(model=MODEL)).check(tmp_path)
    with pytest.raises(ConfigError) as info:
        Infer("det", InferParams(model="no-such-model")).check(tmp_path)
    assert info.value.path == "params.model"
    assert "no-such-model" in info.value.message


def test_params_validation():
    with pytest.raises(ValidationError):
        InferParams.model_validate({})
    with pytest.raises(ValidationError):
        InferParams(model=MODEL, intra_op_threads=-1)
    with pytest.raises(ValidationError):
        InferParams.model_validate({"model": MODEL, "engine": "tensorflow"})


async def test_non_prepared_media_never_reaches_the_model(make_ctx):
    # A frame for a model whose card says nothing of preparing frames (a voice detector) has no
    # tensor: refused before the engine is called.
    infer = Infer("vad", InferParams(model="silero-vad", providers=CPU, intra_op_threads=1))
    await infer.start(make_ctx("vad", input_stages=("decode",)))
    frame = VideoFrame(np.zeros((8, 8, 3), np.uint8), 0, Fraction(1, 25), 8, 8)
    with pytest.raises(ValueError, match="nor a frame the model card says how to prepare"):
        await infer.process(Item(stream_id="cam", media=frame, capture_time=0.0))
    await infer.stop()


def test_size_for_frames_is_checked_against_the_card(tmp_path):
    with pytest.raises(ConfigError) as info:
        Infer("det", InferParams(model=MODEL, size=[100, 320])).check(tmp_path)
    assert (info.value.path, info.value.message) == (
        "params.size",
        "[100, 320]: model 'pp-ocrv4-det' needs multiples of 32",
    )
    with pytest.raises(ConfigError, match="no preprocess section"):
        Infer("vad", InferParams(model="silero-vad", size=[32, 32])).check(tmp_path)


async def prepared_items(make_ctx, frame: VideoFrame, count: int) -> list[Item]:
    prepare = Prepare("prep", PrepareParams(model=MODEL, size=SIZE))
    await prepare.start(make_ctx("prep"))
    items = []
    for seq in range(count):
        item = Item(stream_id="cam", media=frame, capture_time=time.time(), seq=seq)
        items.extend(await prepare.process(item))
    return items


@pytest.mark.parametrize("live", [True, False])
async def test_on_a_live_stream_a_newer_frame_takes_a_waiting_ones_place(make_ctx, sample_frame, live):
    infer = await started_infer(make_ctx)
    await infer.on_stream_added(StreamInfo("cam", "test://", live=live))
    first, second = await prepared_items(make_ctx, sample_frame, 2)
    # Both reach the batcher before its first batch: a live stream keeps only the newer one.
    outs = await asyncio.gather(infer.process(first), infer.process(second))
    counters = infer.ctx.stats.stream("cam")
    if live:
        assert outs == [(), (second,)]
        assert counters.drops == {"stale:det": 1} and infer.batcher.superseded == 1
    else:  # a file loses nothing
        assert outs == [(first,), (second,)]
        assert counters.drops == {}
    assert "det" in second.tensors
    await infer.stop()


async def test_a_live_frame_is_prepared_only_if_it_runs_and_gives_the_prepared_result(
    make_ctx, sample_frame, monkeypatch
):
    infer = await started_infer(make_ctx, fed="decode")
    await infer.on_stream_added(StreamInfo("cam", "rtsp://cam", live=True))
    items = [Item(stream_id="cam", media=sample_frame, capture_time=time.time(), seq=seq) for seq in range(3)]
    prepared: list[int] = []
    original = imaging.prepare_frame
    monkeypatch.setattr(imaging, "prepare_frame", lambda *args: prepared.append(1) or original(*args))

    outs = await asyncio.gather(*(infer.process(item) for item in items))

    assert outs == [(), (), (items[2],)]  # the two older frames were superseded while waiting...
    assert len(prepared) == 1  # ...and never prepared
    result = items[2].tensors["det"]
    monkeypatch.setattr(imaging, "prepare_frame", original)
    eager = await started_infer(make_ctx)
    prepare = Prepare("prep", PrepareParams(model=MODEL, size=SIZE))
    await prepare.start(make_ctx("prep", consumers=(eager,)))
    (reference,) = await prepare.process(Item(stream_id="file", media=sample_frame, capture_time=0.0, seq=0))
    (reference,) = await eager.process(reference)
    assert np.array_equal(result.outputs[OUTPUT], reference.tensors["det"].outputs[OUTPUT])
    assert result.geometry == reference.tensors["det"].geometry
    assert items[2].timings_ms["prepare"] > 0  # the preparing counts as prepare, not as the model's time
    await infer.stop()
    await eager.stop()


async def test_a_file_streams_frame_is_prepared_as_it_comes_and_counted_as_prepare(make_ctx, sample_frame):
    infer = await started_infer(make_ctx, fed="decode")
    await infer.on_stream_added(StreamInfo("file", "a.mp4", live=False))
    item = Item(stream_id="file", media=sample_frame, capture_time=0.0, seq=0)
    (out,) = await infer.process(item)
    assert out is item and item.tensors["det"].outputs[OUTPUT].shape == (1, *SIZE)
    assert item.timings_ms["prepare"] > 0 and item.timings_ms["infer"] > 0
    await infer.stop()


async def test_a_batch_of_live_frames_is_prepared_side_by_side_off_the_model_thread(
    make_ctx, sample_frame, monkeypatch
):
    infer = await started_infer(make_ctx, fed="decode", batch={"max_size": 3, "max_delay_ms": 60_000})
    streams = ["a", "b", "c"]
    items = []
    for stream in streams:
        await infer.on_stream_added(StreamInfo(stream, f"rtsp://{stream}", live=True))
        items.append(Item(stream_id=stream, media=sample_frame, capture_time=time.time()))
    threads: list[str] = []
    original = imaging.prepare_frame
    monkeypatch.setattr(
        imaging, "prepare_frame", lambda *args: threads.append(threading.current_thread().name) or original(*args)
    )

    outs = await asyncio.gather(*(infer.process(item) for item in items))

    assert [out for (out,) in outs] == items  # one batch of three, each with its result
    assert infer.batcher.batches == 1
    assert len(threads) == 3 and not any(name.startswith("model-") for name in threads)
    outputs = [item.tensors["det"].outputs[OUTPUT] for item in items]
    assert all(np.array_equal(outputs[0], other) for other in outputs[1:])  # the same frame thrice
    assert all(item.timings_ms["prepare"] > 0 for item in items)
    await infer.stop()


class BrokenPicture:
    """A decoder's frame whose conversion to pixels fails (a corrupt picture)."""

    def to_ndarray(self, **_: object) -> np.ndarray:
        raise ValueError("corrupt picture")


@pytest.mark.parametrize(
    ("streams", "runs"),
    [
        # Three live frames, prepared side by side in the pool: the two good ones run together.
        ((("a", "good", True), ("b", "broken", True), ("c", "good", True)), [2]),
        # The only live frame of its batch, prepared on the model's thread: the file's frame,
        # prepared as it came, still runs.
        ((("file", "good", False), ("cam", "broken", True)), [1]),
    ],
)
async def test_a_live_frame_that_cannot_be_prepared_fails_alone_and_the_rest_run_together(
    make_ctx, sample_frame, streams, runs
):
    infer = await started_infer(make_ctx, fed="decode", batch={"max_size": len(streams), "max_delay_ms": 60_000})
    broken = VideoFrame(None, 0, Fraction(1, 25), sample_frame.width, sample_frame.height, decoded=BrokenPicture())
    items = []
    for stream, picture, live in streams:
        await infer.on_stream_added(StreamInfo(stream, stream, live=live))
        frame = broken if picture == "broken" else sample_frame
        items.append(Item(stream_id=stream, media=frame, capture_time=time.time()))
    ran: list[int] = []
    engine_infer = infer.engine.infer
    infer.engine.infer = lambda feeds: ran.append(len(feeds["x"])) or engine_infer(feeds)  # type: ignore[method-assign]

    outs = await asyncio.gather(*(infer.process(item) for item in items), return_exceptions=True)

    for (_, picture, _), item, out in zip(streams, items, outs, strict=True):
        if picture == "broken":
            assert isinstance(out, ValueError) and "corrupt picture" in str(out)
        else:
            assert out == (item,)
    assert ran == runs  # the good frames in one run, not the batch and then each alone
    await infer.stop()


@pytest.mark.parametrize(
    ("live", "batch", "timed"),
    [(True, {}, True), (False, {}, False), (False, {"max_size": 1, "latency_budget_ms": 60_000}, True)],
)
async def test_only_live_or_budgeted_streams_give_the_batcher_a_capture_time(
    make_ctx, sample_frame, live, batch, timed
):
    # With one, the batcher serves the freshest streams first; without, plain round-robin.
    infer = await started_infer(make_ctx, batch=batch) if batch else await started_infer(make_ctx)
    await infer.on_stream_added(StreamInfo("cam", "x", live=live))
    (item,) = await prepared_items(make_ctx, sample_frame, 1)
    submitted: list[Request[Any]] = []
    submit = infer.batcher.submit
    infer.batcher.submit = lambda request: submitted.append(request) or submit(request)  # type: ignore[method-assign]
    await infer.process(item)
    assert (submitted[0].captured_at is not None) is timed
    await infer.stop()


async def test_with_a_budget_every_stream_keeps_only_its_newest_frame_waiting(make_ctx, sample_frame):
    infer = await started_infer(make_ctx, batch={"max_size": 1, "latency_budget_ms": 60_000})
    await infer.on_stream_added(StreamInfo("cam", "test://", live=False))
    items = await prepared_items(make_ctx, sample_frame, 3)
    outs = await asyncio.gather(*(infer.process(item) for item in items))
    assert outs == [(), (), (items[2],)]
    assert infer.ctx.stats.stream("cam").drops == {"stale:det": 2}
    await infer.stop()


def test_warm_up_is_a_batch_of_one_at_the_cards_size_where_that_is_known():
    from pipeline.modelcard import load_card
    from stages.infer import warm_up_feeds

    det = warm_up_feeds(load_card("pp-ocrv4-det"))
    assert det is not None and det["x"].shape == (1, 3, 352, 640) and not det["x"].any()
    rec = warm_up_feeds(load_card("pp-ocrv4-rec"))
    assert rec is not None and rec["x"].shape == (1, 3, 48, 320)
    assert warm_up_feeds(load_card("silero-vad")) is None  # keeps state; its window is not a card size


@pytest.mark.parametrize(
    ("fed", "shape"),
    [
        ("prep", (1, 3, 352, 640)),  # the card's size
        ("decode", (1, 3, *SIZE)),  # the size this stage prepares frames at, not the card's
    ],
)
async def test_start_warms_the_model_up_before_the_first_frame_at_the_size_it_runs(make_ctx, monkeypatch, fed, shape):
    import stages.infer.infer as infer_module

    runs: list[tuple[int, ...]] = []
    real_load = infer_module.load_engine

    def recording_load(*args, **kwargs):
        engine = real_load(*args, **kwargs)
        real_infer = engine.infer
        engine.infer = lambda feeds: runs.append(feeds["x"].shape) or real_infer(feeds)  # type: ignore[method-assign]
        return engine

    monkeypatch.setattr(infer_module, "load_engine", recording_load)
    infer = await started_infer(make_ctx, fed=fed)
    assert runs == [shape]
    await infer.stop()


def test_warm_up_zeros_come_from_the_engines_array_module():
    """A model on a GPU warms up on device zeros (CuPy), so the warm-up counts no host copy."""
    from pipeline.modelcard import load_card
    from stages.infer import warm_up_feeds

    made: list[tuple[tuple[int, ...], str]] = []

    class RecordingModule:
        @staticmethod
        def zeros(shape, dtype):
            made.append((tuple(shape), dtype))
            return np.zeros(shape, dtype)

    feeds = warm_up_feeds(load_card("pp-ocrv4-det"), RecordingModule)
    assert feeds is not None and made == [((1, 3, 352, 640), "float32")]


def test_an_infer_not_started_takes_no_device_arrays():
    assert Infer("det", InferParams(model=MODEL)).takes_device_arrays() is False


async def test_a_model_on_the_cpu_takes_no_device_arrays(make_ctx):
    infer = await started_infer(make_ctx)
    assert infer.takes_device_arrays() is False and infer.engine.on_device is False
    assert infer.engine.host_copies == 0 and infer.engine.device_copies == 0
    await infer.stop()


def test_host_tensors_stack_into_one_host_batch():
    from stages.infer import stack_batch

    batch = stack_batch([np.full((3, 2, 2), i, np.float32) for i in range(3)])
    assert isinstance(batch, np.ndarray) and batch.shape == (3, 3, 2, 2) and batch[2].min() == 2


async def test_a_named_input_that_is_missing_is_an_error_not_a_frame_to_prepare(make_ctx, sample_frame):
    """``input: prepp`` (a typo) must not quietly run the model on frames prepared here instead."""
    infer = await started_infer(make_ctx, fed="decode", input="prepp")
    with pytest.raises(ValueError, match="no tensor from stage 'prepp'"):
        await infer.process(frame_item(sample_frame))
    await infer.stop()


async def test_another_stages_tensor_on_the_item_is_told_once(make_ctx, sample_frame, caplog):
    infer = await started_infer(make_ctx, fed="decode")
    caplog.set_level("WARNING")
    for seq in range(2):
        item = Item(stream_id="file", media=sample_frame, capture_time=0.0, seq=seq)
        item.tensors["prep"] = PreparedTensor(np.zeros((3, *SIZE), np.float32))
        (out,) = await infer.process(item)
        assert "det" in out.tensors  # the frame, prepared here, ran
    assert caplog.text.count("the items carry tensors of prep, not of decode") == 1
    await infer.stop()


def test_host_and_device_tensors_never_share_a_batch_group():
    from pipeline.imaging import deferred_frame
    from pipeline.modelcard import load_card
    from stages.infer.arrays import tensor_on_device

    spec = load_card(MODEL).preprocess
    assert spec is not None
    frame = VideoFrame(np.zeros((48, 64, 3), np.uint8), 0, Fraction(1, 25), 64, 48)
    assert tensor_on_device(deferred_frame(frame, (64, 96), "stretch", spec)) is False
    assert tensor_on_device(PreparedTensor(np.zeros((3, 4, 4), np.float32))) is False

    class DeviceArray:  # what a CuPy array says of itself
        @property
        def __cuda_array_interface__(self) -> dict[str, object]:
            return {}

    on_gpu = VideoFrame(DeviceArray(), 0, Fraction(1, 25), 64, 48)  # type: ignore[arg-type]
    assert tensor_on_device(deferred_frame(on_gpu, (64, 96), "stretch", spec)) is True
