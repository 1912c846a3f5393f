"""The TensorRT engine on a real GPU: parity with ONNX Runtime on the CPU on real frames (TF32 off),
an FP16 engine close to FP32 (TensorRT 10) or refused (other versions), device inputs taken
without a host copy, shapes outside the profile refused, and the engine cache reused (and a
corrupt one rebuilt).

Runs wherever ``import tensorrt`` works and a CUDA device is usable; skipped elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.engines import cuda_device_unusable
from pipeline.engines.base import RunSettings
from pipeline.engines.onnxruntime import OnnxRuntimeEngine, OnnxRuntimeOptions
from pipeline.engines.tensorrt import TENSORRT_FIX, TENSORRT_MAJOR, TensorRtEngine, TensorRtOptions, tensorrt_major
from pipeline.errors import ModelError
from pipeline.modelcard import ModelCard, load_card

from .frames import assert_differs_from_zeros, detector_batch

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install -e '.[tensorrt]'; see README)")
cupy = pytest.importorskip("cupy")
NO_DEVICE = cuda_device_unusable()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(NO_DEVICE is not None, reason=f"TensorRT needs CUDA: {NO_DEVICE}")]

TOLERANCE = 1e-3
"""FP32 with TF32 off against ONNX Runtime on the CPU: only kernel order and fused-op rounding differ."""
MAX_BATCH = 2
"""The parity engine's profile: the two-frame reference batch is its largest batch."""
# FP16 bounds on the probability map (sigmoid, 0..1), against the CPU's FP32. Measured on these
# frames with the model's batch norms folded into its convolutions (as TensorRT folds them) and
# every other layer in FP16 on ONNX Runtime's CPU (a pessimistic stand-in: TensorRT keeps layers in
# FP32 where that is faster, and mostly accumulates in FP32): max 0.058 (5 pixels of 450,560 above
# 0.05), mean 3.5e-5, and the text mask (probability > 0.3, text_detection's default ``thresh``)
# different on 0.004% of pixels. Hence max 0.1, mean 1e-3, the mask the same on 99.9% of pixels;
# an engine that read zeros misses all three by far (outputs on zeros are ~1.0 away).
FP16_MAX = 0.1
FP16_MEAN = 1e-3
FP16_MASK_AGREEMENT = 0.999
MASK_THRESHOLD = 0.3


@pytest.fixture(scope="module")
def engine_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh engine cache for this module; model files stay where the session pulled them."""
    from pipeline import modelstore

    models = modelstore.cache_dir() / "models"
    root = tmp_path_factory.mktemp("streamgraph-cache")
    (root / "models").symlink_to(models, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STREAMGRAPH_CACHE", str(root))
        yield root / "tensorrt"


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return load_card("pp-ocrv4-det")


@pytest.fixture(scope="module")
def reference(card: ModelCard, sample_video: Path) -> dict[str, np.ndarray]:
    """Two different real frames, and the CPU's outputs on them and on zeros of the same shape."""
    batch = detector_batch(sample_video)
    cpu = OnnxRuntimeEngine(card, OnnxRuntimeOptions(providers=["CPUExecutionProvider"]))
    name = card.outputs[0].name
    outputs = cpu.infer({"x": batch})[name]
    # The frames differ where it matters: an engine that ran one frame twice would fail parity.
    assert np.abs(outputs[0] - outputs[1]).max() > 100 * TOLERANCE
    return {"batch": batch, "cpu": outputs, "zeros": cpu.infer({"x": np.zeros_like(batch)})[name]}


@pytest.fixture(scope="module")
def fp32_engine(engine_cache: Path, card: ModelCard) -> TensorRtEngine:
    return TensorRtEngine(card, TensorRtOptions(tf32=False), RunSettings(max_batch=MAX_BATCH))


def test_fp32_matches_onnxruntime_on_real_frames_from_device_inputs(
    fp32_engine: TensorRtEngine, card: ModelCard, reference: dict[str, np.ndarray]
) -> None:
    before = fp32_engine.host_copies
    got = fp32_engine.infer({"x": cupy.asarray(reference["batch"])})[card.outputs[0].name]
    assert fp32_engine.host_copies == before  # a device input goes to TensorRT as it is
    assert isinstance(got, np.ndarray)
    assert_differs_from_zeros(reference["cpu"], reference["zeros"], TOLERANCE)
    assert np.abs(got - reference["cpu"]).max() <= TOLERANCE


def test_a_host_input_is_copied_once_and_counted(
    fp32_engine: TensorRtEngine, card: ModelCard, reference: dict[str, np.ndarray]
) -> None:
    before = fp32_engine.host_copies
    got = fp32_engine.infer({"x": reference["batch"]})[card.outputs[0].name]
    assert fp32_engine.host_copies == before + 1
    assert np.abs(got - reference["cpu"]).max() <= TOLERANCE


def test_a_non_contiguous_device_input_is_read_as_its_values(
    fp32_engine: TensorRtEngine, card: ModelCard, reference: dict[str, np.ndarray]
) -> None:
    """A view with strides (every other frame of a stack) is made dense, not misread."""
    batch = reference["batch"]
    blank = np.zeros_like(batch[0])
    view = cupy.asarray(np.stack([batch[0], blank, batch[1], blank]))[::2]
    assert not view.flags.c_contiguous
    before = fp32_engine.host_copies
    got = fp32_engine.infer({"x": view})[card.outputs[0].name]
    assert fp32_engine.host_copies == before
    assert np.abs(got - reference["cpu"]).max() <= TOLERANCE


def test_a_batch_larger_than_the_profile_is_refused(
    fp32_engine: TensorRtEngine, reference: dict[str, np.ndarray]
) -> None:
    batch = reference["batch"]
    too_many = cupy.asarray(np.concatenate([batch, batch[:1]]))
    with pytest.raises(ValueError, match=r"input 'x': shape \(3, 3, 352, 640\) is outside"):
        fp32_engine.infer({"x": too_many})


def test_device_outputs_stay_on_the_device(
    fp32_engine: TensorRtEngine, card: ModelCard, reference: dict[str, np.ndarray]
) -> None:
    # The same engine file: device_outputs only changes what infer returns.
    engine = TensorRtEngine(card, TensorRtOptions(tf32=False), RunSettings(max_batch=MAX_BATCH, device_outputs=True))
    assert engine.engine_path == fp32_engine.engine_path and engine.cache_hit
    outputs = engine.infer({"x": cupy.asarray(reference["batch"])})
    value = outputs[card.outputs[0].name]
    assert hasattr(value, "__cuda_array_interface__")
    assert np.abs(cupy.asnumpy(value) - reference["cpu"]).max() <= TOLERANCE


def test_the_engine_is_built_once_then_reused_from_the_cache(fp32_engine: TensorRtEngine, card: ModelCard) -> None:
    assert fp32_engine.cache_hit is False and fp32_engine.engine_path.is_file()
    again = TensorRtEngine(card, TensorRtOptions(tf32=False), RunSettings(max_batch=MAX_BATCH))
    assert again.cache_hit is True and again.engine_path == fp32_engine.engine_path


def test_a_corrupt_engine_file_is_rebuilt_not_trusted(
    engine_cache: Path, card: ModelCard, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "models").symlink_to(engine_cache.parent / "models", target_is_directory=True)
    monkeypatch.setenv("STREAMGRAPH_CACHE", str(tmp_path))  # its own cache: the module's stays sound
    engine = TensorRtEngine(card, TensorRtOptions(), RunSettings(max_batch=1))
    engine.engine_path.write_bytes(b"not an engine")
    rebuilt = TensorRtEngine(card, TensorRtOptions(), RunSettings(max_batch=1))
    assert rebuilt.cache_hit is False
    assert TensorRtEngine(card, TensorRtOptions(), RunSettings(max_batch=1)).cache_hit is True


@pytest.mark.skipif(tensorrt_major(trt.__version__) != TENSORRT_MAJOR, reason="FP16 needs TensorRT 10")
def test_an_fp16_engine_stays_close_to_fp32_on_real_frames(
    engine_cache: Path, card: ModelCard, reference: dict[str, np.ndarray]
) -> None:
    engine = TensorRtEngine(card, TensorRtOptions(fp16=True, tf32=False), RunSettings(max_batch=MAX_BATCH))
    got = engine.infer({"x": cupy.asarray(reference["batch"])})[card.outputs[0].name]
    difference = np.abs(got - reference["cpu"])
    mask_agreement = float(np.mean((got > MASK_THRESHOLD) == (reference["cpu"] > MASK_THRESHOLD)))
    assert float(difference.max()) <= FP16_MAX
    assert float(difference.mean()) <= FP16_MEAN
    assert mask_agreement >= FP16_MASK_AGREEMENT


@pytest.mark.skipif(tensorrt_major(trt.__version__) == TENSORRT_MAJOR, reason="TensorRT 10 builds FP16")
def test_fp16_is_refused_where_tensorrt_is_not_10(engine_cache: Path, card: ModelCard) -> None:
    with pytest.raises(ModelError, match=re.escape(TENSORRT_FIX)):
        TensorRtEngine(card, TensorRtOptions(fp16=True), RunSettings(max_batch=1))
