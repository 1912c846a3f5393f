"""configs/ocr.yaml end to end on the GPU: NVDEC decode and ONNX Runtime CUDA for both models,
through the real CLI and a real nats-server; it must read the sample as well as the CPU run does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from stages.decode.nvdec import nvdec_unusable
from tests.integration.support import run_to_end
from tests.integration.test_ocr import CONFIG, assert_ocr_read_the_sample

pytestmark = pytest.mark.gpu
pytest.importorskip("cupy")
ort = pytest.importorskip("onnxruntime")
if "CUDAExecutionProvider" not in ort.get_available_providers():
    pytest.skip("this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)", allow_module_level=True)
if nvdec_unusable("h264") is not None:
    pytest.skip(f"NVDEC is not usable: {nvdec_unusable('h264')}", allow_module_level=True)

CUDA = ["CUDAExecutionProvider"]
"""No CPU fallback: a node ONNX Runtime would put on the CPU must not pass as a GPU run."""


def gpu_config(tmp_path: Path) -> Path:
    """configs/ocr.yaml with ``decode: {device: gpu}`` and both models on ONNX Runtime CUDA."""
    config = yaml.safe_load(Path(CONFIG).read_text())
    for stage in config["stages"]:
        if stage["type"] == "file":
            stage["params"]["path"] = str(Path(CONFIG).parent / stage["params"]["path"])
        elif stage["type"] == "decode":
            stage.setdefault("params", {})["device"] = "gpu"
        elif stage["type"] == "infer":
            stage["params"].update(engine="onnxruntime", providers=list(CUDA))
    path = tmp_path / "ocr-gpu.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.timeout(900)
async def test_ocr_on_the_gpu_reads_the_rendered_text_in_every_frame(
    nats_server: Any, sample_video: Path, ground_truth: dict[str, Any], cli_env: dict[str, str], tmp_path: Path
) -> None:
    config = gpu_config(tmp_path)
    recording = await run_to_end(nats_server.url, str(config), "ocr", env=cli_env, timeout_s=840)
    # ``device: gpu`` fails at start where NVDEC cannot decode: a CPU decode cannot pass for it.
    assert_ocr_read_the_sample(recording, ground_truth)
