"""pipeline.engines.tensorrt without TensorRT: the optimization profile and the engine cache key."""

from __future__ import annotations

import pytest

from pipeline.engines.tensorrt import engine_key, profile_shapes
from pipeline.errors import ModelError
from pipeline.modelcard import load_card


def test_profile_covers_batch_up_to_max_size_and_the_cards_image_size():
    det = load_card("pp-ocrv4-det")
    assert det.preprocess is not None
    height, width = det.preprocess.size
    step = det.preprocess.multiple_of
    assert profile_shapes(det, 8) == {"x": ((1, 3, step, step), (8, 3, height, width), (8, 3, height, width))}
    rec = load_card("pp-ocrv4-rec")
    low, opt, high = profile_shapes(rec, 16)["x"]
    assert low[:3] == (1, 3, 48) and high == opt == (16, 3, 48, 320)


def test_profile_refuses_a_dynamic_axis_without_a_range():
    with pytest.raises(ModelError, match=r"\('samples'\) is dynamic"):
        profile_shapes(load_card("silero-vad"), 4)


def test_the_engine_key_changes_with_everything_that_makes_an_engine():
    shapes = {"x": ((1, 3, 32, 32), (8, 3, 64, 64), (8, 3, 64, 64))}
    facts = {"onnx_sha256": "a" * 64, "shapes": shapes, "fp16": False, "gpu": "NVIDIA H100", "trt_version": "10.3"}
    key = engine_key(**facts)  # type: ignore[arg-type]
    assert engine_key(**facts) == key  # type: ignore[arg-type]
    changes = [
        {"onnx_sha256": "b" * 64},
        {"shapes": {"x": ((1, 3, 32, 32), (16, 3, 64, 64), (16, 3, 64, 64))}},
        {"fp16": True},
        {"gpu": "NVIDIA A10"},
        {"trt_version": "10.4"},
    ]
    keys = {engine_key(**{**facts, **change}) for change in changes}  # type: ignore[arg-type]
    assert len(keys) == len(changes) and key not in keys
