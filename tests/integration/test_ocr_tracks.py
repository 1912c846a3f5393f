"""configs/ocr-tracks.yaml end to end: a second model on tracked objects, with real models and a
real nats-server. The text boxes are tracked; the recognizer reads only new or changed tracks,
and every frame's message still carries every tracked line's text."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .support import ROOT, iou, run_to_end
from .test_ocr import MIN_EXACT, read_line

CONFIG = str(ROOT / "configs" / "ocr-tracks.yaml")


def tracked_lines(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Each tracked text box of the frame that has a text by now, as ``{box, text, track_id}``."""
    return [
        {"box": box["box"], "text": box["attributes"]["ocr"]["text"], "track_id": box["track_id"]}
        for box in message["results"]["text"]["boxes"]
        if "attributes" in box
    ]


@pytest.mark.timeout(900)
async def test_the_recognizer_reads_each_track_once_and_every_frame_has_the_text(
    nats_server: Any, sample_video: Path, ground_truth: dict[str, Any], cli_env: dict[str, str]
) -> None:
    recording = await run_to_end(nats_server.url, CONFIG, "ocr-tracks", env=cli_env, timeout_s=840)
    assert recording.returncode == 0, recording.stderr[-3000:]
    frames = ground_truth["frames"]
    results = recording.results["sample"]
    assert [r["seq"] for r in results] == list(range(frames))

    tracked = crops = exact = 0
    track_of_line: dict[str, Counter[int]] = {truth["text"]: Counter() for truth in ground_truth["lines"]}
    for message in results:
        boxes = message["results"]["text"]["boxes"]
        assert all(isinstance(box["track_id"], int) for box in boxes)
        tracked += len(boxes)
        chosen = message["results"]["crops"]["boxes"]
        crops += len(chosen)
        # What the recognizer read on this frame is of the tracks cropped on it, and nothing else.
        read_now = message["results"]["ocr"]["lines"]
        assert {line["track_id"] for line in read_now} <= {box["track_id"] for box in chosen}
        lines = tracked_lines(message)
        for truth in ground_truth["lines"]:
            box = truth["boxes"][message["seq"]]
            exact += read_line(box, lines) == truth["text"].strip()
            on_it = [line for line in lines if iou(box, line["box"]) >= 0.5]
            track_of_line[truth["text"]].update(line["track_id"] for line in on_it)
    total = frames * len(ground_truth["lines"])
    assert exact / total >= MIN_EXACT, f"only {exact}/{total} lines read exactly from the tracks' texts"
    # The recognizer ran on a few crops, not on every box of every frame (that is ocr.yaml).
    assert crops <= tracked // 10, f"{crops} crops for {tracked} tracked boxes"
    # A line is one track for (nearly) the whole clip: its text is carried from one read.
    for text, ids in track_of_line.items():
        ((_, count),) = ids.most_common(1)
        assert count >= 0.9 * frames, f"{text!r}: tracks {dict(ids)}"
