"""Decoding a YOLO detector's heads (Darknet v3/v4, as the model card's ``yolo`` section describes
them) into boxes, and per-class non-maximum suppression: numpy only, for one image at a time.

Boxes come out normalized to the model's input (0..1, ``x0, y0, x1, y1``): with a stretched input
that is also the fraction of the source frame, so a post stage multiplies by the frame's size.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pipeline.accuracy import Boxes, register_boxes
from pipeline.errors import ModelError
from pipeline.modelcard import ModelCard, YoloSpec

DEFAULT_THRESHOLD = 0.25
"""Score (objectness x class) below which a detection is dropped, unless a stage says otherwise."""
DEFAULT_IOU = 0.45
"""NMS overlap above which the weaker of two boxes of a class is dropped, unless a stage says otherwise."""


@dataclass(frozen=True)
class Detections:
    """One image's detections: ``boxes`` ``[n, 4]`` (x0, y0, x1, y1, normalized), ``scores``
    ``[n]``, ``classes`` ``[n]`` (indices into the class names)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.size)

    def take(self, keep: np.ndarray) -> Detections:
        return Detections(self.boxes[keep], self.scores[keep], self.classes[keep])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


def decode(
    outputs: Mapping[str, np.ndarray], spec: YoloSpec, input_size: tuple[int, int], threshold: float
) -> Detections:
    """Every (cell, anchor, class) of one image scoring above ``threshold``. ``outputs``: each
    head's output for this image, ``[anchors x (5 + classes), h, w]``; ``input_size``: the model's
    input (height, width) in pixels."""
    boxes, scores, classes = [], [], []
    in_h, in_w = input_size
    s = spec.scale_x_y
    for head in spec.heads:
        raw = outputs[head.output]
        anchors = np.asarray(head.anchors, np.float32)
        _, cells_h, cells_w = raw.shape
        raw = raw.reshape(len(anchors), 5 + spec.classes, cells_h, cells_w)
        score = _sigmoid(raw[:, 4:5]) * _sigmoid(raw[:, 5:])  # [anchors, classes, h, w]
        anchor, cls, y, x = np.nonzero(score > threshold)
        if anchor.size == 0:
            continue
        t = raw[anchor, :4, y, x]  # [n, 4]
        cx = (_sigmoid(t[:, 0]) * s - (s - 1) / 2 + x) / cells_w
        cy = (_sigmoid(t[:, 1]) * s - (s - 1) / 2 + y) / cells_h
        w = np.exp(t[:, 2]) * anchors[anchor, 0] / in_w
        h = np.exp(t[:, 3]) * anchors[anchor, 1] / in_h
        boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1))
        scores.append(score[anchor, cls, y, x])
        classes.append(cls)
    if not boxes:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    return Detections(np.concatenate(boxes), np.concatenate(scores), np.concatenate(classes))


def nms(found: Detections, iou_threshold: float) -> Detections:
    """Greedy non-maximum suppression within each class, highest score first; the kept
    detections in descending score order."""
    order = np.argsort(-found.scores, kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(found), bool)
    boxes = found.boxes
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    for position, index in enumerate(order):
        if suppressed[index]:
            continue
        keep.append(int(index))
        rest = order[position + 1 :]
        rest = rest[(found.classes[rest] == found.classes[index]) & ~suppressed[rest]]
        if rest.size == 0:
            continue
        x0 = np.maximum(boxes[index, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[index, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[index, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[index, 3], boxes[rest, 3])
        overlap = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        iou = overlap / np.maximum(areas[index] + areas[rest] - overlap, 1e-12)
        suppressed[rest[iou > iou_threshold]] = True
    return found.take(np.asarray(keep, np.int64))


@register_boxes("object_detection")
def detected_boxes(card: ModelCard, outputs: Mapping[str, np.ndarray]) -> Boxes:
    """What the ``yolo`` stage reports of one image at its default thresholds: the accuracy gate's
    reading of a detector (``pipeline.accuracy``)."""
    if card.yolo is None or card.preprocess is None:
        raise ModelError(f"model {card.name!r}: an object detector's card needs its yolo and preprocess sections")
    height, width = card.preprocess.size
    found = nms(decode(outputs, card.yolo, (height, width), DEFAULT_THRESHOLD), DEFAULT_IOU)
    return Boxes(found.boxes * np.array([width, height, width, height], np.float32), found.scores, found.classes)
