"""ONNX Runtime on CUDA with I/O binding: the same outputs as on the CPU, device inputs bound where
they are (no host copy), outputs left on the device when asked."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from pipeline.engines.base import EngineOptions
from pipeline.engines.onnxruntime import OnnxRuntimeEngine
from pipeline.modelcard import load_card

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason="this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)",
    ),
]
CUDA = ("CUDAExecutionProvider", "CPUExecutionProvider")


def _batch() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((2, 3, 352, 640)).astype(np.float32)


def test_cuda_outputs_match_the_cpu_on_the_text_detector() -> None:
    card = load_card("pp-ocrv4-det")
    cpu = OnnxRuntimeEngine(card, EngineOptions(providers=("CPUExecutionProvider",))).infer({"x": _batch()})
    cuda = OnnxRuntimeEngine(card, EngineOptions(providers=CUDA)).infer({"x": _batch()})
    name = card.outputs[0].name
    assert isinstance(cuda[name], np.ndarray)
    assert np.abs(cuda[name] - cpu[name]).max() <= 1e-3


def test_device_inputs_are_bound_without_a_host_copy_and_outputs_stay_on_the_device() -> None:
    cupy = pytest.importorskip("cupy")
    card = load_card("pp-ocrv4-det")
    engine = OnnxRuntimeEngine(card, EngineOptions(providers=CUDA, device_outputs=True))
    outputs = engine.infer({"x": cupy.asarray(_batch())})
    assert engine.host_copies == 0
    value = outputs[card.outputs[0].name]
    assert hasattr(value, "__cuda_array_interface__") and value.shape[0] == 2
    reference = OnnxRuntimeEngine(card, EngineOptions(providers=("CPUExecutionProvider",))).infer({"x": _batch()})
    assert np.abs(cupy.asnumpy(value) - reference[card.outputs[0].name]).max() <= 1e-3
