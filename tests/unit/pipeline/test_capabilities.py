"""pipeline.capabilities: the probes ``doctor`` prints and ``auto`` choices use."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest

from pipeline import capabilities
from pipeline.capabilities import Check, _caps_supported, all_checks, loaded_providers


def test_the_probe_model_is_a_real_onnx_model_onnxruntime_runs():
    session = onnxruntime.InferenceSession(capabilities.PROBE_MODEL, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": np.array([-2.0], np.float32)})
    assert out.tolist() == [0.0]  # Relu
    assert loaded_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_every_gpu_path_is_usable_or_says_why():
    checks = all_checks()
    assert [c.name for c in checks] == [
        "CUDA device",
        "CuPy",
        "ONNX Runtime CUDA",
        "ONNX Runtime TensorRT provider",
        "TensorRT",
        "NVDEC h264",
        "NVDEC hevc",
    ]
    for check in checks:
        assert check.usable or (check.problem and len(check.problem) > 10), check


def test_a_codec_nvdec_does_not_take_is_named():
    check = capabilities.nvdec("vp9")
    assert check.problem == "NVDEC does not take 'vp9' here (only h264, hevc)"


def test_the_engine_and_decode_probes_agree_with_the_checks():
    from pipeline.engines import cuda_device_unusable, onnxruntime_cuda_unusable, tensorrt_unusable
    from stages.decode.nvdec import nvdec_unusable

    assert tensorrt_unusable() == capabilities.tensorrt().problem
    assert onnxruntime_cuda_unusable() == capabilities.onnxruntime_cuda().problem
    assert cuda_device_unusable() == capabilities.cuda_device().problem
    assert nvdec_unusable("h264") == capabilities.nvdec("h264").problem


@pytest.mark.parametrize(
    ("caps", "supported"),
    [
        ({"is_supported": 1, "num_decoder_engines": 7}, True),
        ({"supported": False}, False),
        ({"num_decoder_engines": 7, "width_max": 8192, "height_max": 8192}, True),
        ({"num_decoder_engines": 7, "width_max": 0, "height_max": 0}, False),
        ({"codec_id": 4}, None),
    ],
)
def test_decoder_caps_are_read_whatever_they_are_named(caps, supported):
    assert _caps_supported(caps) is supported


def test_a_check_is_usable_only_without_a_problem():
    assert Check("x", None).usable and not Check("x", "broken").usable


def test_the_420_chroma_member_is_found_whatever_it_is_called():
    import enum
    import types

    chroma = enum.Enum("cudaVideoChromaFormat", {"Monochrome": 0, "420": 1, "422": 2})
    assert capabilities._chroma_420(types.SimpleNamespace(cudaVideoChromaFormat=chroma)) is chroma["420"]
    other = enum.Enum("cudaVideoChromaFormat", {"Monochrome": 0})
    with pytest.raises(LookupError, match="no 4:2:0 member"):
        capabilities._chroma_420(types.SimpleNamespace(cudaVideoChromaFormat=other))


def test_cuda_libraries_are_found_in_any_folder_of_sys_path(tmp_path, monkeypatch):
    """onnxruntime-gpu installed apart from the nvidia-* wheels (``--target``, the user's site) still
    finds them: every ``sys.path`` folder is searched, in onnxruntime's order."""
    import types

    wanted = [("nvidia", "cu13", "lib", "libcublasLt.so.13"), ("nvidia", "cu13", "lib", "libcublas.so.13")]
    ort = types.SimpleNamespace(_get_nvidia_dll_paths=lambda is_windows, cuda, cudnn: wanted)
    first, second = tmp_path / "site-a", tmp_path / "site-b"
    (second / "nvidia" / "cu13" / "lib").mkdir(parents=True)
    for name in ("libcublas.so.13", "libcublasLt.so.13"):
        (second / "nvidia" / "cu13" / "lib" / name).write_bytes(b"")
    monkeypatch.setattr("sys.path", [str(first), str(second)])
    lib = second / "nvidia" / "cu13" / "lib"
    assert capabilities._nvidia_libraries(ort) == [lib / "libcublasLt.so.13", lib / "libcublas.so.13"]
    assert capabilities._nvidia_libraries(types.SimpleNamespace()) == []  # an onnxruntime without the helper
