"""pipeline.engines.tensorrt without TensorRT: the optimization profile, the engine cache key, the
TensorRT version check and the input shape check (against small fakes of ``tensorrt``)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.crops import padded_width
from pipeline.engines.base import is_contiguous
from pipeline.engines.tensorrt import (
    TENSORRT_FIX,
    TensorRtEngine,
    check_tensorrt_version,
    engine_key,
    profile_shapes,
    set_input_shape,
)
from pipeline.errors import ModelError
from pipeline.modelcard import load_card
from stages.text.text_crops import TextCropsParams


def fake_tensorrt(version: str, *, fp16_flag: bool) -> Any:
    """What ``check_tensorrt_version`` reads of the ``tensorrt`` module: its version and builder flags."""
    flags = {"TF32": 7, **({"FP16": 0} if fp16_flag else {})}
    return SimpleNamespace(__version__=version, BuilderFlag=SimpleNamespace(**flags))


class FakeContext:
    """An execution context whose profile takes shapes between ``low`` and ``high``, as TensorRT's does."""

    def __init__(self, low: tuple[int, ...], high: tuple[int, ...]) -> None:
        self.low, self.high = low, high
        self.shapes: dict[str, tuple[int, ...]] = {}

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.low):
            return False
        if not all(low <= size <= high for low, size, high in zip(self.low, shape, self.high, strict=True)):
            return False
        self.shapes[name] = shape
        return True


def test_profile_covers_batch_up_to_max_size_and_the_cards_image_size():
    det = load_card("pp-ocrv4-det")
    assert det.preprocess is not None
    height, width = det.preprocess.size
    assert profile_shapes(det, 8) == {"x": ((1, 3, 32, 32), (4, 3, height, width), (8, 3, height, width))}
    rec = load_card("pp-ocrv4-rec")
    assert profile_shapes(rec, 16) == {"x": ((1, 3, 48, 32), (8, 3, 48, 320), (16, 3, 48, 320))}


@pytest.mark.parametrize(("max_batch", "opt"), [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8)])
def test_the_profile_is_tuned_for_half_the_largest_batch(max_batch: int, opt: int):
    low, tuned, high = profile_shapes(load_card("pp-ocrv4-det"), max_batch)["x"]
    assert (low[0], tuned[0], high[0]) == (1, opt, max_batch)


def test_the_recognizers_profile_takes_every_crop_width_text_crops_makes():
    """The width floor (32 px) is met by every crop of a default text_crops stage: widths are padded
    to a multiple of width_bucket (32) and capped at the card's width."""
    rec = load_card("pp-ocrv4-rec")
    assert rec.preprocess is not None
    height, max_width = rec.preprocess.size
    bucket = TextCropsParams.model_fields["width_bucket"].default
    low, _, high = profile_shapes(rec, 1)["x"]
    widths = {
        padded_width(crop_width, crop_height, height=height, max_width=max_width, width_bucket=bucket)[1]
        for crop_width in range(1, 2000, 7)
        for crop_height in (1, 5, 20, 48, 200)
    }
    assert min(widths) == low[3] == 32 and max(widths) == high[3] == max_width


def test_profile_refuses_a_dynamic_axis_without_a_range():
    with pytest.raises(ModelError, match=r"\('samples'\) is dynamic"):
        profile_shapes(load_card("silero-vad"), 4)


def test_the_engine_key_changes_with_everything_that_makes_an_engine():
    shapes = {"x": ((1, 3, 32, 32), (4, 3, 64, 64), (8, 3, 64, 64))}
    facts: dict[str, Any] = {
        "onnx_sha256": "a" * 64,
        "shapes": shapes,
        "fp16": False,
        "tf32": True,
        "gpu": "NVIDIA H100",
        "trt_version": "10.3",
    }
    key = engine_key(**facts)
    assert engine_key(**facts) == key
    changes: list[dict[str, Any]] = [
        {"onnx_sha256": "b" * 64},
        {"shapes": {"x": ((1, 3, 32, 32), (8, 3, 64, 64), (16, 3, 64, 64))}},
        {"fp16": True},
        {"tf32": False},
        {"gpu": "NVIDIA A10"},
        {"trt_version": "10.4"},
    ]
    keys = {engine_key(**{**facts, **change}) for change in changes}
    assert len(keys) == len(changes) and key not in keys


@pytest.mark.parametrize(
    ("version", "fp16_flag"),
    [("11.0.0.1", False), ("11.4.1", True), ("10.13.3.9", False), ("unknown", True)],
)
def test_fp16_without_tensorrt_10s_fp16_flag_is_refused_naming_model_version_and_fix(version: str, fp16_flag: bool):
    with pytest.raises(ModelError) as refused:
        check_tensorrt_version(fake_tensorrt(version, fp16_flag=fp16_flag), "pp-ocrv4-det", fp16=True)
    message = str(refused.value)
    assert "'pp-ocrv4-det'" in message and f"TensorRT {version}" in message and TENSORRT_FIX in message


def test_fp16_on_tensorrt_10_goes_on_quietly(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="streamgraph.engine.tensorrt"):
        check_tensorrt_version(fake_tensorrt("10.13.3.9", fp16_flag=True), "pp-ocrv4-det", fp16=True)
    assert caplog.records == []


def test_fp32_on_tensorrt_11_goes_on_with_a_warning(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="streamgraph.engine.tensorrt"):
        check_tensorrt_version(fake_tensorrt("11.0.0.1", fp16_flag=False), "pp-ocrv4-det", fp16=False)
    [record] = caplog.records
    message = record.getMessage()
    assert "TensorRT 11.0.0.1" in message and "unverified" in message and TENSORRT_FIX in message


def test_tensorrt_older_than_10_is_refused_even_in_fp32():
    with pytest.raises(ModelError, match=r"TensorRT 8\.6\.1 is older"):
        check_tensorrt_version(fake_tensorrt("8.6.1", fp16_flag=True), "pp-ocrv4-det", fp16=False)


def test_a_shape_inside_the_profile_is_set():
    context = FakeContext((1, 3, 32, 32), (8, 3, 352, 640))
    set_input_shape(context, "x", (2, 3, 352, 640), ((1, 3, 32, 32), (4, 3, 352, 640), (8, 3, 352, 640)))
    assert context.shapes == {"x": (2, 3, 352, 640)}


@pytest.mark.parametrize("shape", [(9, 3, 352, 640), (1, 3, 352, 672), (1, 3, 16, 640), (3, 352, 640)])
def test_a_shape_outside_the_profile_is_refused_naming_input_shape_and_range(shape: tuple[int, ...]):
    low, high = (1, 3, 32, 32), (8, 3, 352, 640)
    with pytest.raises(ValueError) as refused:
        set_input_shape(FakeContext(low, high), "x", shape, (low, (4, 3, 352, 640), high))
    message = str(refused.value)
    assert "'x'" in message and str(shape) in message and f"min {low}, max {high}" in message


@pytest.mark.parametrize(
    ("strides", "dense"), [(None, True), ((7680, 2560, 4), True), ((4, 12, 3840), False), ((15360, 5120, 8), False)]
)
def test_only_dense_c_order_buffers_go_to_tensorrt_as_they_are(strides: tuple[int, ...] | None, dense: bool):
    interface = {"shape": (4, 3, 640), "typestr": "<f4", "strides": strides}
    assert is_contiguous(interface) is dense


def test_the_engine_runs_on_the_device():
    """``infer`` stages hand it device arrays as they are (the engine itself needs TensorRT to build)."""
    assert TensorRtEngine.__new__(TensorRtEngine).on_device is True
