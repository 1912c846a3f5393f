"""The CLI as a user types it: config errors are one line naming the YAML path, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .support import ROOT

GOOD = (ROOT / "configs" / "text-detect.yaml").read_text()


def _validate(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "pipeline.yaml"
    # Written elsewhere than configs/: the sample's path made absolute, so only the edit is wrong.
    config.write_text(text.replace("../samples/text.mp4", str(ROOT / "samples" / "text.mp4")))
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "validate", str(config)],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        check=False,
    )


def test_validate_accepts_the_demo_config() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "validate", "configs/text-detect.yaml"],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "video -> decode -> prep -> det -> text -> publish" in done.stdout


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("      rate: ${env:STREAMGRAPH_RATE:-max}", "      ratee: max"),
            "stages[0].params.ratee: unknown key (did you mean 'rate'?)",
        ),
        (("  threads: 4", "  threads: four"), "runtime.threads: expected int, got 'four'"),
        (("    inputs: [det]", "    inputs: [detector]"), "stages[4].inputs[0]: unknown stage 'detector'"),
        (
            ("    type: text_detection", "    type: text_detector"),
            "stages[4].type: unknown stage type 'text_detector' (did you mean 'text_detection'?)",
        ),
        (
            (
                "    type: prepare\n    inputs: [decode]\n    params:\n      model: pp-ocrv4-det",
                "    type: prepare\n    inputs: [decode]\n    params:\n      model: pp-ocr-det",
            ),
            "stages[2].params.model: unknown model 'pp-ocr-det' (did you mean 'pp-ocrv4-det'?)",
        ),
        (
            (
                "      model: pp-ocrv4-det\n  - name: text",
                "      model: pp-ocrv4-det\n      intra_op_threads: lots\n  - name: text",
            ),
            "stages[3].params.intra_op_threads: expected int, got 'lots'",
        ),
        (
            (
                "      model: pp-ocrv4-det\n  - name: text",
                "      model: pp-ocrv4-det\n      engine: onnxruntim\n  - name: text",
            ),
            "stages[3].params.engine: unknown engine 'onnxruntim' (did you mean 'onnxruntime'?); "
            "available: auto, kserve, onnxruntime, openvino, tensorrt, tfserving, torchserve, triton",
        ),
        (
            (
                "      model: pp-ocrv4-det\n  - name: text",
                "      model: pp-ocrv4-det\n      engine: tensorrt\n      provider: [CPU]\n  - name: text",
            ),
            "stages[3].params.provider: unknown key; allowed: batch, engine, fp16, input, model, resize, size, tf32",
        ),
    ],
)
def test_validate_names_the_yaml_path_at_fault(tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    old, new = edit
    assert old in GOOD
    done = _validate(tmp_path, GOOD.replace(old, new))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert expected in lines[0]
    assert str(tmp_path / "pipeline.yaml") in lines[0]


def test_run_with_a_dead_bus_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "configs/text-detect.yaml", "--nats-url", "nats://127.0.0.1:9"],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        check=False,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "error: cannot connect to NATS at nats://127.0.0.1:9" in done.stderr


def test_run_with_a_gpu_provider_this_onnxruntime_lacks_fails_before_the_first_frame(
    tmp_path: Path, nats_server: Any
) -> None:
    """``providers: [CUDAExecutionProvider]`` where ONNX Runtime has no CUDA: the run stops at start,
    naming the provider, and nothing is published (no silent CPU run)."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: tests/gpu covers the provider that is there")
    config = tmp_path / "cuda.yaml"
    config.write_text(
        GOOD.replace("../samples/text.mp4", str(ROOT / "samples" / "text.mp4")).replace(
            "      model: pp-ocrv4-det\n  - name: text",
            "      model: pp-ocrv4-det\n      providers: [CUDAExecutionProvider]\n  - name: text",
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(config), "--nats-url", nats_server.url, "--no-progress"],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        check=False,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "CUDAExecutionProvider" in done.stderr and "not available" in done.stderr
    assert "frames decoded" not in done.stdout  # it never got as far as a summary of frames


def test_doctor_exits_0_and_gives_each_gpu_path_with_its_reason() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "doctor"], capture_output=True, text=True, cwd=str(ROOT), check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for path in ("CUDA device", "CuPy", "ONNX Runtime CUDA", "TensorRT", "NVDEC h264", "NVDEC hevc"):
        (line,) = [line for line in lines if line.strip().startswith(path + "  ")]
        state, _, why = line.strip()[len(path) :].strip().partition(": ")
        assert state in ("usable", "unavailable") and why.strip(), line
    assert any(line.strip().startswith("engine: auto") for line in lines)


def test_a_stage_module_beside_the_config_needs_no_pythonpath(tmp_path: Path, sample_video: Path) -> None:
    """``class: brightness_stage:Brightness`` with brightness_stage.py next to the YAML, run from
    another directory with no PYTHONPATH: found; a misspelled class says what the module has."""
    (tmp_path / "brightness_stage.py").write_text(
        "from pipeline.stage import Stage\n\n\nclass Brightness(Stage):\n    pass\n"
    )
    config = tmp_path / "mine.yaml"
    text = f"""
pipeline: mine
stages:
  - {{name: video, type: file, params: {{path: '{sample_video}'}}}}
  - {{name: decode, type: decode, inputs: [video]}}
  - {{name: bright, class: 'brightness_stage:Brightness', inputs: [decode]}}
"""
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [str(Path(sys.executable).parent / "streamgraph"), "validate", str(config)]
    done = subprocess.run(command, capture_output=True, text=True, cwd="/", env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "video -> decode -> bright" in done.stdout
    config.write_text(text.replace("Brightness'", "Brightnes'"))
    done = subprocess.run(command, capture_output=True, text=True, cwd="/", env=env, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"error: {config}: stages[2].class: module 'brightness_stage' ({tmp_path / 'brightness_stage.py'}) "
        "has no 'Brightnes'; Stage classes there: Brightness"
    )
