"""``text_detection``: DB post-processing for PP-OCR detectors.

Probability map -> binarize (and dilate) -> contours -> min-area rotated boxes, scored by their
mean probability -> unclip (DB predicts shrunk text regions; grow each box back by
``area * unclip_ratio / perimeter``) -> source-frame pixels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from pydantic import Field

from pipeline.accuracy import Boxes, register_boxes
from pipeline.media import Item
from pipeline.modelcard import ModelCard
from pipeline.stage import Stage, StageContext, StageParams, register_stage
from pipeline.tensors import ModelOutput


class TextDetectionParams(StageParams):
    input: str | None = None
    """The ``infer`` stage whose output to read; defaults to this stage's first input."""
    thresh: float = Field(default=0.3, gt=0, lt=1)
    """Pixel probability above which a pixel is text."""
    box_thresh: float = Field(default=0.5, ge=0, le=1)
    """Mean probability inside a box below which it is discarded."""
    unclip_ratio: float = Field(default=1.6, gt=0)
    max_candidates: int = Field(default=1000, ge=1)
    min_size: float = Field(default=3.0, ge=0)
    """Boxes whose short side (in model pixels) is smaller are discarded."""


DEFAULT_PARAMS = TextDetectionParams()


@dataclass(frozen=True, slots=True)
class TextBox:
    quad: np.ndarray
    """4x2 corners, clockwise from top-left, in model-input pixels."""
    score: float


@register_stage("text_detection")
class TextDetection(Stage):
    Params = TextDetectionParams
    params: TextDetectionParams
    latency_key = "post"

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self.source_key = self.params.input or ctx.input_stages[0]

    async def process(self, item: Item) -> Sequence[Item]:
        output = item.tensors.pop(self.source_key, None)
        if not isinstance(output, ModelOutput):
            raise ValueError(f"no model output from stage {self.source_key!r} on this item (is it an infer stage?)")
        probability = next(iter(output.outputs.values()))[0]
        boxes = await self.ctx.run_blocking(db_boxes, probability, self.params)
        geometry = output.geometry
        found: list[dict[str, Any]] = []
        for box in boxes:
            quad = geometry.to_source(box.quad) if geometry is not None else box.quad
            x1, y1 = quad.min(axis=0)
            x2, y2 = quad.max(axis=0)
            found.append(
                {
                    "box": [round(float(v), 1) for v in (x1, y1, x2, y2)],
                    "quad": [[round(float(x), 1), round(float(y), 1)] for x, y in quad],
                    "score": round(box.score, 4),
                }
            )
        item.results[self.name] = {"type": "text_detection", "model": output.model, "boxes": found}
        return (item,)


def db_boxes(probability: np.ndarray, params: TextDetectionParams) -> list[TextBox]:
    """Text boxes from a DB probability map (HxW float in [0, 1]), in map pixels."""
    mask = cv2.dilate((probability > params.thresh).astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes = []
    for contour in contours[: params.max_candidates]:
        center, (width, height), angle = cv2.minAreaRect(contour)
        if min(width, height) < params.min_size:
            continue
        score = _mean_inside(probability, cv2.boxPoints((center, (width, height), angle)))
        if score < params.box_thresh:
            continue
        # Offsetting a rectangle by d grows each side by 2d; the rounded corners a polygon offset
        # would add do not change the min-area rectangle taken afterwards.
        distance = width * height * params.unclip_ratio / (2.0 * (width + height))
        grown = ((center[0], center[1]), (width + 2 * distance, height + 2 * distance), angle)
        if min(grown[1]) < params.min_size + 2:
            continue
        boxes.append(TextBox(order_clockwise(cv2.boxPoints(grown)), score))
    boxes.sort(key=lambda b: (float(b.quad[:, 1].min()), float(b.quad[:, 0].min())))
    return boxes


@register_boxes("text_detection")
def text_boxes(card: ModelCard, outputs: Mapping[str, np.ndarray]) -> Boxes:
    """What ``text_detection`` finds in one image's probability map at its default params, as
    upright boxes: the accuracy gate's reading of a text detector (``pipeline.accuracy``)."""
    probability = np.asarray(next(iter(outputs.values())))[0]
    found = db_boxes(probability, DEFAULT_PARAMS)
    boxes = np.array([[*box.quad.min(axis=0), *box.quad.max(axis=0)] for box in found], np.float32).reshape(-1, 4)
    return Boxes(boxes, np.array([box.score for box in found], np.float32), np.zeros(len(found), np.int64))


def order_clockwise(points: np.ndarray) -> np.ndarray:
    """Top-left, top-right, bottom-right, bottom-left."""
    by_x = points[np.argsort(points[:, 0], kind="stable")]
    left = by_x[:2][np.argsort(by_x[:2, 1], kind="stable")]
    right = by_x[2:][np.argsort(by_x[2:, 1], kind="stable")]
    return np.array([left[0], right[0], right[1], left[1]], dtype=np.float32)


def _mean_inside(probability: np.ndarray, quad: np.ndarray) -> float:
    height, width = probability.shape
    x0 = int(np.clip(np.floor(quad[:, 0].min()), 0, width - 1))
    x1 = int(np.clip(np.ceil(quad[:, 0].max()), 0, width - 1))
    y0 = int(np.clip(np.floor(quad[:, 1].min()), 0, height - 1))
    y1 = int(np.clip(np.ceil(quad[:, 1].max()), 0, height - 1))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    shifted = (quad - np.array([x0, y0], dtype=np.float32)).astype(np.int32)
    cv2.fillPoly(mask, [shifted], 1)
    return float(cv2.mean(probability[y0 : y1 + 1, x0 : x1 + 1], mask)[0])
