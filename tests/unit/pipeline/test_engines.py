"""pipeline.engines: which engine ``auto`` picks and why, TensorRT's profile and cache key, and
that the CPU path never imports the GPU stack."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.engines import choose_engine, create_engine
from pipeline.engines.base import EngineOptions
from pipeline.engines.tensorrt import engine_key, profile_shapes
from pipeline.errors import ModelError
from pipeline.modelcard import load_card


def usable() -> None:
    return None


def test_auto_prefers_tensorrt_when_it_is_usable():
    choice = choose_engine("auto", tensorrt=usable, onnxruntime_cuda=usable)
    assert choice.kind == "tensorrt"


def test_auto_falls_back_to_onnxruntime_cuda_and_says_why():
    choice = choose_engine("auto", tensorrt=lambda: "not installed: tensorrt", onnxruntime_cuda=usable)
    assert (choice.kind, choice.providers) == ("onnxruntime", ("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert "TensorRT: not installed: tensorrt" in choice.why


def test_auto_ends_on_the_cpu_naming_both_reasons():
    choice = choose_engine("auto", tensorrt=lambda: "no CUDA device", onnxruntime_cuda=lambda: "no provider")
    assert (choice.kind, choice.providers) == ("onnxruntime", ("CPUExecutionProvider",))
    assert choice.why == "TensorRT: no CUDA device; ONNX Runtime CUDA: no provider"


def test_a_named_engine_is_taken_as_asked():
    broken = lambda: "broken"  # noqa: E731
    assert choose_engine("tensorrt", tensorrt=broken, onnxruntime_cuda=broken).kind == "tensorrt"
    assert choose_engine("onnxruntime", tensorrt=usable, onnxruntime_cuda=usable).providers is None


def test_on_this_machine_auto_loads_a_working_engine():
    card = load_card("pp-ocrv4-det")
    engine = create_engine("auto", card, EngineOptions())
    assert engine.description.startswith(("onnxruntime", "tensorrt"))


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


def test_the_cpu_path_imports_nothing_from_the_gpu_stack():
    """Start-up, config checks and a CPU model load leave CUDA, CuPy, TensorRT and torch unimported."""
    code = (
        "import sys, json\n"
        "import pipeline.cli, stages\n"
        "from pipeline.engines import create_engine\n"
        "from pipeline.engines.base import EngineOptions\n"
        "from pipeline.modelcard import load_card\n"
        "create_engine('auto', load_card('pp-ocrv4-det'), EngineOptions())\n"
        "gpu = ('cupy', 'tensorrt', 'torch', 'cuda', 'PyNvVideoCodec')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in gpu)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
