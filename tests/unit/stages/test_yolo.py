"""stages.objects.yolo: decoding a YOLO head as Darknet does, and per-class NMS."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.modelcard import YoloHeadSpec, YoloSpec
from stages.objects.yolo import Detections, decode, nms

SPEC = YoloSpec(heads=[YoloHeadSpec(output="head", anchors=[[10, 20], [40, 80]])], classes=2, scale_x_y=1.05)


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_one_confident_cell_decodes_to_its_box_and_class() -> None:
    raw = np.full((2, 5 + 2, 4, 4), -20.0, np.float32)  # 2 anchors, 2 classes, a 4x4 grid
    anchor, y, x = 1, 2, 3
    raw[anchor, 0:4, y, x] = [logit(0.25), logit(0.75), np.log(2.0), np.log(0.5)]
    raw[anchor, 4, y, x] = logit(0.9)  # objectness
    raw[anchor, 5 + 1, y, x] = logit(0.8)  # class 1
    found = decode({"head": raw.reshape(14, 4, 4)}, SPEC, (64, 128), threshold=0.5)

    assert len(found) == 1 and found.classes.tolist() == [1]
    assert found.scores[0] == pytest.approx(0.9 * 0.8, abs=1e-6)
    s = 1.05
    cx, cy = (0.25 * s - (s - 1) / 2 + x) / 4, (0.75 * s - (s - 1) / 2 + y) / 4
    w, h = 2.0 * 40 / 128, 0.5 * 80 / 64  # exp(t) x the anchor, over the input's size
    np.testing.assert_allclose(found.boxes[0], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=1e-6)


def test_nothing_above_the_threshold_is_no_detection() -> None:
    found = decode({"head": np.full((14, 4, 4), -20.0, np.float32)}, SPEC, (64, 64), threshold=0.1)
    assert len(found) == 0 and found.boxes.shape == (0, 4)


def test_nms_keeps_the_best_of_overlapping_boxes_of_one_class_only() -> None:
    boxes = np.array([[0, 0, 1, 1], [0.05, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3]], np.float32)
    found = Detections(boxes, np.array([0.6, 0.9, 0.7, 0.5], np.float32), np.array([0, 0, 1, 0]))
    kept = nms(found, iou_threshold=0.45)
    # The 0.6 box overlaps the 0.9 one of its class: gone. Class 1's box stays; so does the far one.
    assert kept.scores.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert kept.classes.tolist() == [0, 1, 0]
