"""configs/ocr.yaml end to end: detection -> crops -> recognition, real models, real nats-server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .support import ROOT, Recording, iou, run_to_end

CONFIG = str(ROOT / "configs" / "ocr.yaml")
MIN_EXACT = 0.9
"""Share of rendered lines (over all frames) whose recognized text must equal the truth exactly."""


def read_line(truth_box: list[float], lines: list[dict[str, Any]]) -> str:
    """What the pipeline read where a truth line is: the recognized lines on it, left to right.

    A line is on the truth box when their boxes overlap (IoU >= 0.3) or its center is inside it;
    several (a line the detector split in two) are joined with single spaces.
    """
    x1, y1, x2, y2 = truth_box
    on_it = []
    for line in lines:
        bx1, by1, bx2, by2 = line["box"]
        center_x, center_y = (bx1 + bx2) / 2, (by1 + by2) / 2
        if iou(truth_box, line["box"]) >= 0.3 or (x1 <= center_x <= x2 and y1 <= center_y <= y2):
            on_it.append(line)
    on_it.sort(key=lambda line: line["box"][0])
    return " ".join(line["text"].strip() for line in on_it)


# Two models over the whole video is the heaviest run in the suite: generous hang guards (not timing
# assertions) so a loaded CI machine does not turn slowness into a failure.
@pytest.mark.timeout(900)
async def test_ocr_reads_the_rendered_text_in_every_frame(
    nats_server: Any, sample_video: Path, ground_truth: dict[str, Any], cli_env: dict[str, str]
) -> None:
    recording = await run_to_end(nats_server.url, CONFIG, "ocr", env=cli_env, timeout_s=840)
    assert_ocr_read_the_sample(recording, ground_truth)


def assert_ocr_read_the_sample(recording: Recording, ground_truth: dict[str, Any]) -> None:
    """One message per frame of the sample, in order, with detections and text; at least
    ``MIN_EXACT`` of the rendered lines read exactly."""
    assert recording.returncode == 0, recording.stderr
    frames = ground_truth["frames"]
    assert f"{frames} frames decoded, {frames} messages published, 0 dropped" in recording.stdout

    results = recording.results["sample"]
    # One schema-valid message per frame (the Recorder validates), in order, each with both results.
    assert [r["seq"] for r in results] == list(range(frames))
    assert recording.event_names("sample") == ["started", "ended"]
    for message in results:
        assert message["results"]["text"]["type"] == "text_detection"
        assert message["results"]["ocr"]["type"] == "text_recognition"
        assert message["results"]["ocr"]["model"] == "pp-ocrv4-rec"

    exact = total = 0
    misread: dict[str, list[str]] = {}
    for message in results:
        lines = message["results"]["ocr"]["lines"]
        for line in lines:
            assert line["text"].strip(), "an empty line should have scored 0 and been dropped"
            assert 0.5 <= line["score"] <= 1.0
        for truth in ground_truth["lines"]:
            total += 1
            read = read_line(truth["boxes"][message["seq"]], lines)
            if read == truth["text"].strip():
                exact += 1
            else:
                misread.setdefault(truth["text"], []).append(read)
    assert total == frames * len(ground_truth["lines"])
    examples = {text: sorted(set(reads))[:5] for text, reads in misread.items()}
    assert exact / total >= MIN_EXACT, f"only {exact}/{total} lines read exactly; misread: {examples}"

    latency = results[-1]["latency_ms"]
    assert latency["prepare"] > 0 and latency["infer"] > 0 and latency["post"] > 0
