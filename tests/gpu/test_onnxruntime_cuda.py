"""ONNX Runtime on CUDA with I/O binding: the same outputs as on the CPU on real frames (TF32 off),
device inputs bound where they are (no host copy), outputs left on the device when asked, and a
CPU session given device inputs copies them to the host and counts it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pipeline.engines.base import RunSettings
from pipeline.engines.onnxruntime import OnnxRuntimeEngine, OnnxRuntimeOptions
from pipeline.modelcard import load_card

from .frames import assert_differs_from_zeros, detector_batch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        "CUDAExecutionProvider" not in ort.get_available_providers(),
        reason="this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)",
    ),
]
CUDA = ["CUDAExecutionProvider"]
"""No CPU fallback: a node ONNX Runtime would put on the CPU must not pass as a CUDA run."""
CPU = ["CPUExecutionProvider"]
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def card():  # type: ignore[no-untyped-def]
    return load_card("pp-ocrv4-det")


@pytest.fixture(scope="module")
def reference(card, sample_video: Path) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """The CPU's outputs on two real frames, and on zeros of the same shape."""
    batch = detector_batch(sample_video)
    cpu = OnnxRuntimeEngine(card, OnnxRuntimeOptions(providers=CPU))
    name = card.outputs[0].name
    return {
        "batch": batch,
        "cpu": cpu.infer({"x": batch})[name],
        "zeros": cpu.infer({"x": np.zeros_like(batch)})[name],
    }


def test_cuda_outputs_match_the_cpu_on_real_frames(card, reference: dict[str, np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    engine = OnnxRuntimeEngine(card, OnnxRuntimeOptions(providers=CUDA, tf32=False))
    assert engine.providers[0] == "CUDAExecutionProvider" and engine.on_device
    cuda = engine.infer({"x": reference["batch"]})[card.outputs[0].name]
    assert isinstance(cuda, np.ndarray)
    assert_differs_from_zeros(reference["cpu"], reference["zeros"], TOLERANCE)
    assert np.abs(cuda - reference["cpu"]).max() <= TOLERANCE
    assert engine.host_copies == 1  # the host batch, copied once


def test_device_inputs_are_bound_without_a_host_copy_and_outputs_stay_on_the_device(  # type: ignore[no-untyped-def]
    card, reference: dict[str, np.ndarray]
) -> None:
    cupy = pytest.importorskip("cupy")
    engine = OnnxRuntimeEngine(card, OnnxRuntimeOptions(providers=CUDA, tf32=False), RunSettings(device_outputs=True))
    outputs = engine.infer({"x": cupy.asarray(reference["batch"])})
    assert engine.host_copies == 0
    value = outputs[card.outputs[0].name]
    assert hasattr(value, "__cuda_array_interface__") and value.shape[0] == 2
    assert np.abs(cupy.asnumpy(value) - reference["cpu"]).max() <= TOLERANCE


def test_a_non_contiguous_device_input_is_read_as_its_values(card, reference: dict[str, np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    """A view with strides (every other frame of a stack) is made dense, not misread."""
    cupy = pytest.importorskip("cupy")
    engine = OnnxRuntimeEngine(card, OnnxRuntimeOptions(providers=CUDA, tf32=False))
    batch = reference["batch"]
    interleaved = cupy.asarray(np.stack([batch[0], np.zeros_like(batch[0]), batch[1], np.zeros_like(batch[0])]))
    view = interleaved[::2]
    assert not view.flags.c_contiguous
    got = engine.infer({"x": view})[card.outputs[0].name]
    assert np.abs(got - reference["cpu"]).max() <= TOLERANCE


def test_a_cpu_session_given_device_inputs_copies_them_and_counts_it(card, reference: dict[str, np.ndarray]) -> None:  # type: ignore[no-untyped-def]
    cupy = pytest.importorskip("cupy")
    engine = OnnxRuntimeEngine(card, OnnxRuntimeOptions(providers=CPU))
    got = engine.infer({"x": cupy.asarray(reference["batch"])})[card.outputs[0].name]
    assert engine.device_copies == 1
    assert np.abs(got - reference["cpu"]).max() <= 1e-5
