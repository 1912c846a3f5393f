"""pipeline.engines.onnxruntime: provider choice, the real PP-OCRv4 detector, signature checks."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pipeline.engines import AutoOptions, UnknownEngine, create_engine
from pipeline.engines.base import check_signature
from pipeline.engines.onnxruntime import (
    PREFERRED_PROVIDERS,
    OnnxRuntimeEngine,
    OnnxRuntimeOptions,
    check_loaded,
    choose_providers,
    provider_options,
)
from pipeline.errors import ModelError
from pipeline.modelcard import ModelCard, TensorSpec, load_card

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return load_card("pp-ocrv4-det")


@pytest.fixture(scope="module")
def engine(card) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(card, OnnxRuntimeOptions(providers=CPU, intra_op_threads=1))


def with_input(card: ModelCard, **changes) -> ModelCard:
    spec = card.inputs[0].model_copy(update=changes)
    return card.model_copy(update={"inputs": [spec]})


# --- choose_providers --------------------------------------------------------------------------


def test_choose_providers_best_installed_first_and_tensorrt_only_when_asked():
    available = ["CPUExecutionProvider", "AzureExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    assert choose_providers(None, available) == list(PREFERRED_PROVIDERS)
    assert PREFERRED_PROVIDERS == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert choose_providers(("TensorrtExecutionProvider",), available) == ["TensorrtExecutionProvider"]
    assert choose_providers((), ["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers(None, ["CPUExecutionProvider", "CUDAExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_choose_providers_falls_back_to_whatever_is_installed():
    assert choose_providers(None, ["OddExecutionProvider"]) == ["OddExecutionProvider"]


def test_choose_providers_keeps_the_requested_order():
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(("CPUExecutionProvider", "CUDAExecutionProvider"), available) == [
        "CPUExecutionProvider",
        "CUDAExecutionProvider",
    ]


def test_choose_providers_missing_requested_provider_is_an_error():
    with pytest.raises(ModelError) as info:
        choose_providers(("CUDAExecutionProvider", "CPUExecutionProvider"), ["CPUExecutionProvider"])
    message = str(info.value)
    assert "CUDAExecutionProvider are not available" in message
    assert "this build has CPUExecutionProvider" in message


# --- the real model ------------------------------------------------------------------------------


def test_engine_runs_the_detector(engine, card):
    assert engine.providers[0] == "CPUExecutionProvider"
    assert engine.description == "onnxruntime[CPUExecutionProvider]"
    assert engine.inputs == card.inputs
    assert engine.outputs == card.outputs
    outputs = engine.infer({"x": np.zeros((1, 3, 64, 64), np.float32)})
    assert list(outputs) == [card.outputs[0].name] == ["sigmoid_0.tmp_0"]
    result = outputs["sigmoid_0.tmp_0"]
    assert result.shape == (1, 1, 64, 64)
    assert result.dtype == np.float32
    assert np.all((result >= 0) & (result <= 1))


def test_engine_follows_the_input_size(engine):
    result = engine.infer({"x": np.zeros((2, 3, 32, 96), np.float32)})["sigmoid_0.tmp_0"]
    assert result.shape == (2, 1, 32, 96)


def test_create_engine_auto_is_onnxruntime(card):
    assert isinstance(create_engine("auto", card, AutoOptions(providers=CPU)), OnnxRuntimeEngine)
    available = "auto, kserve, onnxruntime, openvino, tensorrt, tfserving, torchserve, triton"
    with pytest.raises(UnknownEngine, match=rf"unknown engine 'nosuch'; available: {available}"):
        create_engine("nosuch", card)
    close = r"\(did you mean 'tensorrt'\?\)"
    with pytest.raises(UnknownEngine, match=rf"unknown engine 'tensorflow' {close}; available: {available}"):
        create_engine("tensorflow", card)


def test_engine_with_an_unavailable_provider(card):
    with pytest.raises(ModelError, match="NoSuchExecutionProvider are not available"):
        OnnxRuntimeEngine(card, OnnxRuntimeOptions(providers=["NoSuchExecutionProvider"]))


def test_engine_rejects_a_card_whose_input_name_differs(card):
    renamed = with_input(card, name="image")
    with pytest.raises(ModelError) as info:
        create_engine("onnxruntime", renamed, OnnxRuntimeOptions(providers=CPU))
    message = str(info.value)
    assert "model 'pp-ocrv4-det'" in message
    assert "card lists inputs ['image']" in message
    assert "the model has ['x']" in message


def test_engine_rejects_a_file_onnxruntime_cannot_load(tmp_path):
    payload = b"this is not an onnx model"
    (tmp_path / "bad.onnx").write_bytes(payload)
    (tmp_path / "bad.yaml").write_text(
        "name: bad\nlicense: MIT\ntask: t\nsource: {path: bad.onnx}\n"
        f"sha256: {hashlib.sha256(payload).hexdigest()}\n"
        "inputs: [{name: x, dtype: float32, shape: [1]}]\noutputs: [{name: y, dtype: float32, shape: [1]}]\n"
    )
    with pytest.raises(ModelError, match="model 'bad': ONNX Runtime cannot load"):
        OnnxRuntimeEngine(load_card(str(tmp_path / "bad.yaml")), OnnxRuntimeOptions(providers=CPU))


# --- check_signature -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def file_inputs(engine):
    return engine.metadata().inputs


def test_check_signature_accepts_the_card(card, file_inputs):
    check_signature(card, "input", card.inputs, file_inputs)


def test_check_signature_rejects_a_different_name(card, file_inputs):
    renamed = with_input(card, name="y")
    with pytest.raises(ModelError, match=r"card lists inputs \['y'\], the model has \['x'\]"):
        check_signature(renamed, "input", renamed.inputs, file_inputs)


def test_check_signature_rejects_an_extra_tensor(card, file_inputs):
    extra = card.model_copy(update={"inputs": [*card.inputs, TensorSpec(name="z", dtype="float32", shape=[1])]})
    with pytest.raises(ModelError, match="card lists inputs"):
        check_signature(extra, "input", extra.inputs, file_inputs)


def test_check_signature_rejects_a_different_dtype(card, file_inputs):
    half = with_input(card, dtype="float16")
    with pytest.raises(ModelError, match="input 'x' is float32 in the model, float16 in the card"):
        check_signature(half, "input", half.inputs, file_inputs)


@pytest.mark.parametrize("shape", [["batch", 3, "height"], ["batch", 4, "height", "width"]])
def test_check_signature_rejects_an_incompatible_shape(card, file_inputs, shape):
    wrong = with_input(card, shape=shape)
    with pytest.raises(ModelError, match="input 'x' has shape"):
        check_signature(wrong, "input", wrong.inputs, file_inputs)


def test_check_signature_allows_fixed_sizes_where_the_file_is_dynamic(card, file_inputs):
    fixed = with_input(card, shape=[1, 3, 64, 64])
    check_signature(fixed, "input", fixed.inputs, file_inputs)


# --- providers that are installed but do not load ---------------------------------------------------


def test_a_gpu_provider_asked_for_that_did_not_load_is_an_error_naming_it(card):
    """ONNX Runtime drops a CUDA provider whose cuBLAS/cuDNN is missing and runs on the CPU."""
    asked = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ModelError, match=r"could not load CUDAExecutionProvider \(.*\); not running it on the CPU"):
        check_loaded(card, asked, ["CPUExecutionProvider"], asked=True)


def test_a_default_gpu_provider_that_did_not_load_is_logged_and_left_out(card, caplog):
    caplog.set_level("WARNING")
    asked = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    loaded = check_loaded(card, asked, ["CPUExecutionProvider"], asked=False)
    assert loaded == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider did not load" in caplog.text


def test_providers_that_loaded_pass():
    card = load_card("pp-ocrv4-det")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert check_loaded(card, providers, providers, asked=True) == providers


def test_provider_options_turn_tf32_off_and_keep_the_tensorrt_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMGRAPH_CACHE", str(tmp_path))
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt, cuda, cpu = provider_options(providers, OnnxRuntimeOptions(tf32=False, fp16=True))
    assert cuda["use_tf32"] == "0" and cpu == {}
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_fp16_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "onnxruntime-tensorrt")
    assert provider_options(["CUDAExecutionProvider"], OnnxRuntimeOptions())[0]["use_tf32"] == "1"


def test_a_cpu_engine_is_not_on_the_device(engine):
    assert engine.on_device is False and engine.device_copies == 0 and engine.host_copies == 0
