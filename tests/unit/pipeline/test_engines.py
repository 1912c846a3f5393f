"""pipeline.engines: which engine ``auto`` picks and why, and that the CPU path never imports the GPU stack."""

from __future__ import annotations

import json
import subprocess
import sys

from pipeline.engines import choose_engine, create_engine
from pipeline.engines.base import EngineOptions
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


def test_auto_with_providers_named_is_onnxruntime_with_those_providers():
    engine = create_engine("auto", load_card("pp-ocrv4-det"), EngineOptions(providers=("CPUExecutionProvider",)))
    assert engine.description == "onnxruntime[CPUExecutionProvider]"


def test_on_this_machine_auto_loads_a_working_engine():
    card = load_card("pp-ocrv4-det")
    engine = create_engine("auto", card, EngineOptions())
    assert engine.description.startswith(("onnxruntime", "tensorrt"))


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
