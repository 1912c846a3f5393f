"""The CLI as a user types it: config errors are one line naming the YAML path, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .support import ROOT

GOOD = (ROOT / "configs" / "text-detect.yaml").read_text()


def _validate(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "pipeline.yaml"
    config.write_text(text)
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
        (("    type: text_detection", "    type: text_detector"), "stages[4].type: unknown stage type 'text_detector'"),
        (
            (
                "    type: prepare\n    inputs: [decode]\n    params:\n      model: pp-ocrv4-det",
                "    type: prepare\n    inputs: [decode]\n    params:\n      model: pp-ocr-det",
            ),
            "stages[2].params.model: unknown model 'pp-ocr-det'",
        ),
        (
            (
                "      model: pp-ocrv4-det\n  - name: text",
                "      model: pp-ocrv4-det\n      intra_op_threads: lots\n  - name: text",
            ),
            "stages[3].params.intra_op_threads: expected int, got 'lots'",
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
