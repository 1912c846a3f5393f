"""Many streams at once on the GPU (NVDEC -> CuPy prepare -> batched ONNX Runtime CUDA): every
result matches the CPU path's for the same frame.

This is where a missing order between CuPy's stream (prepare, stack) and ONNX Runtime's (the
model) shows: with batches of frames from 8 streams prepared side by side, a model that read a
half-written batch would find other boxes than the CPU does in the frames it misread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.engines import onnxruntime_cuda_unusable
from stages.decode.nvdec import nvdec_unusable
from tests.integration.support import iou, run_to_end

pytestmark = pytest.mark.gpu
pytest.importorskip("cupy")
if onnxruntime_cuda_unusable() is not None:
    pytest.skip(f"ONNX Runtime CUDA is not usable: {onnxruntime_cuda_unusable()}", allow_module_level=True)
if nvdec_unusable("h264") is not None:
    pytest.skip(f"NVDEC is not usable: {nvdec_unusable('h264')}", allow_module_level=True)

STREAMS = 8
MATCHED_FRAMES = 0.99
"""NVDEC's pixels differ from FFmpeg's by a little (about 49 dB PSNR), which can move a box across
the detector's threshold in the odd frame; a race would spoil whole batches."""


def config(tmp_path: Path, video: Path, *, gpu: bool) -> Path:
    name = "many-gpu" if gpu else "many-cpu"
    sources = [
        {"name": f"v{i}", "type": "file", "params": {"path": str(video), "id": f"s{i}", "rate": "max"}}
        for i in range(STREAMS)
    ]
    infer = {"model": "pp-ocrv4-det", "engine": "onnxruntime", "batch": {"max_size": STREAMS, "max_delay_ms": 5}}
    infer["providers"] = ["CUDAExecutionProvider"] if gpu else ["CPUExecutionProvider"]
    if gpu:
        infer["tf32"] = False
    pipeline = {
        "pipeline": name,
        "runtime": {"threads": 8},
        "stages": [
            *sources,
            {
                "name": "decode",
                "type": "decode",
                "inputs": [s["name"] for s in sources],
                "params": {"device": "gpu" if gpu else "cpu"},
            },
            {"name": "prep", "type": "prepare", "inputs": ["decode"], "params": {"model": "pp-ocrv4-det"}},
            {"name": "det", "type": "infer", "inputs": ["prep"], "params": infer},
            {"name": "text", "type": "text_detection", "inputs": ["det"]},
            {"name": "publish", "type": "publish", "inputs": ["text"]},
        ],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    return path


def boxes_match(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    return len(a) == len(b) and all(any(iou(x["box"], y["box"]) >= 0.8 for y in b) for x in a)


@pytest.mark.timeout(900)
async def test_every_result_of_many_streams_on_the_gpu_matches_the_cpu_path(
    nats_server: Any, sample_video: Path, ground_truth: dict[str, Any], cli_env: dict[str, str], tmp_path: Path
) -> None:
    ids = tuple(f"s{i}" for i in range(STREAMS))
    runs = {}
    for gpu in (True, False):
        path = config(tmp_path, sample_video, gpu=gpu)
        name = "many-gpu" if gpu else "many-cpu"
        runs[gpu] = await run_to_end(nats_server.url, str(path), name, ids, env=cli_env, timeout_s=600)
        assert runs[gpu].returncode == 0, runs[gpu].stderr
    frames = ground_truth["frames"]
    matched = total = 0
    for stream_id in ids:
        gpu_results, cpu_results = runs[True].results[stream_id], runs[False].results[stream_id]
        assert [r["seq"] for r in gpu_results] == list(range(frames))  # none lost, in order
        for gpu_message, cpu_message in zip(gpu_results, cpu_results, strict=True):
            total += 1
            matched += boxes_match(gpu_message["results"]["text"]["boxes"], cpu_message["results"]["text"]["boxes"])
    assert matched >= MATCHED_FRAMES * total, f"only {matched} of {total} frames found the CPU path's boxes"
