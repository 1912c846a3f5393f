"""pipeline.engines: which engine ``auto`` picks and why, and that the CPU path never imports the GPU stack."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from pipeline.engines import AutoOptions, choose_engine, create_engine
from pipeline.engines.onnxruntime import OnnxRuntimeOptions
from pipeline.errors import ModelError
from pipeline.modelcard import load_card


def usable() -> None:
    return None


def test_auto_prefers_tensorrt_when_it_is_usable():
    choice = choose_engine(tensorrt=usable, onnxruntime_cuda=usable)
    assert choice.kind == "tensorrt"


def test_auto_falls_back_to_onnxruntime_cuda_and_says_why():
    choice = choose_engine(tensorrt=lambda: "not installed: tensorrt", onnxruntime_cuda=usable)
    assert (choice.kind, choice.providers) == ("onnxruntime", ("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert "TensorRT: not installed: tensorrt" in choice.why


def test_auto_ends_on_the_cpu_naming_both_reasons():
    choice = choose_engine(tensorrt=lambda: "no CUDA device", onnxruntime_cuda=lambda: "no provider")
    assert (choice.kind, choice.providers) == ("onnxruntime", ("CPUExecutionProvider",))
    assert choice.why == "TensorRT: no CUDA device; ONNX Runtime CUDA: no provider"


def test_engines_are_registered_by_name_each_with_its_strict_options():
    from pipeline.engines import engine_entry, engine_names
    from pipeline.engines.onnxruntime import OnnxRuntimeEngine, OnnxRuntimeOptions
    from pipeline.engines.openvino import OpenVinoEngine, OpenVinoOptions
    from pipeline.engines.tensorrt import TensorRtEngine, TensorRtOptions

    assert engine_names() == [
        "auto",
        "kserve",
        "onnxruntime",
        "openvino",
        "tensorrt",
        "tfserving",
        "torchserve",
        "triton",
    ]
    assert (engine_entry("onnxruntime").load, engine_entry("onnxruntime").options) == (
        OnnxRuntimeEngine,
        OnnxRuntimeOptions,
    )
    assert (engine_entry("tensorrt").load, engine_entry("tensorrt").options) == (TensorRtEngine, TensorRtOptions)
    assert (engine_entry("openvino").load, engine_entry("openvino").options) == (OpenVinoEngine, OpenVinoOptions)
    with pytest.raises(ValidationError, match="providers"):
        OpenVinoOptions.model_validate({"providers": ["CPUExecutionProvider"]})  # ONNX Runtime's, not OpenVINO's
    with pytest.raises(ValidationError, match="intra_op_threads"):
        TensorRtOptions.model_validate({"intra_op_threads": 2})  # an ONNX Runtime key: not TensorRT's


def test_a_model_whose_tensors_are_not_the_cards_is_refused_by_create_engine():
    card = load_card("pp-ocrv4-det")
    renamed = card.model_copy(update={"outputs": [card.outputs[0].model_copy(update={"name": "probability"})]})
    with pytest.raises(ModelError, match=r"card lists outputs \['probability'\], the model has \['sigmoid_0.tmp_0'\]"):
        create_engine("onnxruntime", renamed, OnnxRuntimeOptions(providers=["CPUExecutionProvider"]))


def test_auto_with_providers_named_is_onnxruntime_with_those_providers():
    engine = create_engine("auto", load_card("pp-ocrv4-det"), AutoOptions(providers=["CPUExecutionProvider"]))
    assert engine.description == "onnxruntime[CPUExecutionProvider]"


def test_on_this_machine_auto_loads_a_working_engine():
    card = load_card("pp-ocrv4-det")
    engine = create_engine("auto", card)
    assert engine.description.startswith(("onnxruntime", "openvino", "tensorrt"))


def test_the_cpu_path_imports_nothing_from_the_gpu_stack():
    """Start-up, config checks and a CPU model load leave CUDA, CuPy, TensorRT and torch unimported."""
    code = (
        "import sys, json\n"
        "import pipeline.cli, stages\n"
        "from pipeline.engines import create_engine\n"
        "from pipeline.modelcard import load_card\n"
        "create_engine('auto', load_card('pp-ocrv4-det'))\n"
        "gpu = ('cupy', 'tensorrt', 'torch', 'cuda', 'PyNvVideoCodec')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in gpu)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_a_model_with_a_fixed_batch_smaller_than_the_stages_is_refused(tmp_path):
    """An ONNX file with a batch of 1 under a stage that sends 4: refused at load, not batch by batch."""
    import hashlib

    from pipeline.capabilities import PROBE_MODEL
    from pipeline.engines.base import RunSettings

    (tmp_path / "one.onnx").write_bytes(PROBE_MODEL)  # x: float[1] -> y: float[1]
    (tmp_path / "one.yaml").write_text(
        "name: one\nlicense: MIT\ntask: t\nsource: {path: one.onnx}\n"
        f"sha256: {hashlib.sha256(PROBE_MODEL).hexdigest()}\n"
        "inputs: [{name: x, dtype: float32, shape: [batch]}]\noutputs: [{name: y, dtype: float32, shape: [batch]}]\n"
    )
    card = load_card(str(tmp_path / "one.yaml"))
    options = OnnxRuntimeOptions(providers=["CPUExecutionProvider"])
    assert create_engine("onnxruntime", card, options, RunSettings(max_batch=1)).metadata().max_batch == 1
    with pytest.raises(ModelError, match=r"takes batches of at most 1 .* the stage sends up to 4"):
        create_engine("onnxruntime", card, options, RunSettings(max_batch=4))


def test_the_batch_limit_is_read_on_the_cards_batch_axis():
    """silero-vad's state input is [2, batch, 128]: its fixed 2 is no batch limit."""
    from pipeline.engines.base import TensorInfo
    from pipeline.engines.onnxruntime import fixed_batch

    card = load_card("silero-vad")
    state_first = [TensorInfo("state", "float32", [2, "batch", 128]), TensorInfo("input", "float32", ["b", "s"])]
    assert fixed_batch(card, state_first) is None
    assert fixed_batch(card, [TensorInfo("input", "float32", [1, "s"])]) == 1
    engine = create_engine("onnxruntime", card, OnnxRuntimeOptions(providers=["CPUExecutionProvider"]))
    assert engine.metadata().max_batch is None
