"""YOLOv4-tiny (converted from Darknet at pull time) on the GPU engines: ONNX Runtime on CUDA and
TensorRT (FP32, TF32 off) find what ONNX Runtime on the CPU finds on Darknet's photos: the same
classes, boxes within a pixel, scores within 0.01. Each test runs where its engine can."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from pipeline.engines import cuda_device_unusable
from pipeline.engines.base import RunSettings
from pipeline.engines.onnxruntime import OnnxRuntimeEngine, OnnxRuntimeOptions
from pipeline.imaging import prepare_image
from pipeline.modelcard import ModelCard, load_card
from samples.photos import darknet_photos
from stages.objects.yolo import Detections, decode, nms

pytestmark = pytest.mark.gpu

PHOTOS = ("dog", "person")
NO_DEVICE = cuda_device_unusable()


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return load_card("yolov4-tiny")


@pytest.fixture(scope="module")
def batch(card: ModelCard) -> np.ndarray:
    assert card.preprocess is not None
    spec = card.preprocess
    photos = darknet_photos()
    images = [cv2.imread(str(photos[name])) for name in PHOTOS]
    return np.stack([prepare_image(image, (spec.size[0], spec.size[1]), spec.resize, spec).data for image in images])


def detections(card: ModelCard, outputs: dict[str, Any]) -> list[Detections]:
    assert card.yolo is not None
    host = {name: np.asarray(value) for name, value in outputs.items()}
    return [
        nms(decode({name: value[i] for name, value in host.items()}, card.yolo, (416, 416), 0.25), 0.45)
        for i in range(len(PHOTOS))
    ]


def assert_same(found: list[Detections], reference: list[Detections]) -> None:
    for name, got, want in zip(PHOTOS, found, reference, strict=True):
        assert got.classes.tolist() == want.classes.tolist(), name
        np.testing.assert_allclose(got.boxes * 416, want.boxes * 416, atol=1.0, err_msg=name)
        np.testing.assert_allclose(got.scores, want.scores, atol=0.01, err_msg=name)


@pytest.fixture(scope="module")
def on_the_cpu(card: ModelCard, batch: np.ndarray) -> list[Detections]:
    engine = OnnxRuntimeEngine(card, OnnxRuntimeOptions(providers=["CPUExecutionProvider"]))
    found = detections(card, engine.infer({"input": batch}))
    assert len(found[0]) >= 3  # a dog, a bicycle, a truck: real detections, not an empty frame
    return found


@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ort.get_available_providers(),
    reason="this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)",
)
def test_onnxruntime_on_cuda_finds_what_the_cpu_finds(
    card: ModelCard, batch: np.ndarray, on_the_cpu: list[Detections]
) -> None:
    engine = OnnxRuntimeEngine(card, OnnxRuntimeOptions(providers=["CUDAExecutionProvider"], tf32=False))
    assert engine.providers[0] == "CUDAExecutionProvider"
    assert_same(detections(card, engine.infer({"input": batch})), on_the_cpu)


@pytest.mark.skipif(NO_DEVICE is not None, reason=f"TensorRT needs CUDA: {NO_DEVICE}")
def test_tensorrt_finds_what_the_cpu_finds(card: ModelCard, batch: np.ndarray, on_the_cpu: list[Detections]) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install -e '.[tensorrt]'; see README)")
    from pipeline.engines.tensorrt import TensorRtEngine, TensorRtOptions

    engine = TensorRtEngine(card, TensorRtOptions(tf32=False), RunSettings(max_batch=len(PHOTOS)))
    assert_same(detections(card, engine.infer({"input": batch})), on_the_cpu)
