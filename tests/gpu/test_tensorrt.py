"""The TensorRT engine on a real GPU: parity with ONNX Runtime on the CPU, device inputs taken
without a host copy, and the engine cache reused (and a corrupt one rebuilt).

Runs wherever ``import tensorrt`` works and a CUDA device is usable; skipped elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.engines.base import EngineOptions
from pipeline.engines.onnxruntime import OnnxRuntimeEngine
from pipeline.modelcard import load_card

pytestmark = pytest.mark.gpu
trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (NVIDIA's package index; see README)")
cupy = pytest.importorskip("cupy")


@pytest.fixture()
def engine_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh engine cache; model files stay where the session pulled them."""
    from pipeline import modelstore

    models = modelstore.cache_dir() / "models"
    monkeypatch.setenv("STREAMGRAPH_CACHE", str(tmp_path))
    (tmp_path / "models").symlink_to(models, target_is_directory=True)
    return tmp_path / "tensorrt"


def _image(batch: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.standard_normal((batch, 3, 352, 640)).astype(np.float32)


def test_tensorrt_matches_onnxruntime_and_reuses_its_engine(engine_cache: Path) -> None:
    from pipeline.engines.tensorrt import TensorRtEngine

    card = load_card("pp-ocrv4-det")
    first = TensorRtEngine(card, EngineOptions(max_batch=4))
    assert first.cache_hit is False and first.engine_path.is_file()
    second = TensorRtEngine(card, EngineOptions(max_batch=4))
    assert second.cache_hit is True

    batch = _image(2)
    expected = OnnxRuntimeEngine(card, EngineOptions(providers=("CPUExecutionProvider",))).infer({"x": batch})
    got = second.infer({"x": cupy.asarray(batch)})
    assert second.host_copies == 0  # a device input goes to TensorRT as it is
    name = card.outputs[0].name
    assert np.abs(got[name] - expected[name]).max() <= 1e-3


def test_a_corrupt_engine_file_is_rebuilt_not_trusted(engine_cache: Path) -> None:
    from pipeline.engines.tensorrt import TensorRtEngine

    card = load_card("pp-ocrv4-det")
    engine = TensorRtEngine(card, EngineOptions(max_batch=1))
    engine.engine_path.write_bytes(b"not an engine")
    rebuilt = TensorRtEngine(card, EngineOptions(max_batch=1))
    assert rebuilt.cache_hit is False
    assert TensorRtEngine(card, EngineOptions(max_batch=1)).cache_hit is True


def test_device_outputs_stay_on_the_device(engine_cache: Path) -> None:
    from pipeline.engines.tensorrt import TensorRtEngine

    card = load_card("pp-ocrv4-det")
    engine = TensorRtEngine(card, EngineOptions(max_batch=1, device_outputs=True))
    outputs = engine.infer({"x": cupy.asarray(_image(1))})
    assert all(hasattr(value, "__cuda_array_interface__") for value in outputs.values())
