"""``text_crops``: cut each detected text box out of the frame as a recognizer input.

PaddleOCR's recognition preprocessing: the box's quad is warped upright into a rectangle
(perspective transform, border pixels replicated), a crop at least 1.5 times taller than wide is
turned 90° (vertical text), then it is resized to the model's height keeping its aspect ratio,
normalized, and right-padded with zeros (in normalized space) up to its padded width.

The padded width is a property of the crop alone: its resized width rounded up to a multiple of
``width_bucket``, capped at ``max_width`` (wider crops are squeezed to fit, as PaddleOCR does).
PaddleOCR instead pads every crop of a batch to the batch's widest, so a crop's result depends on
its neighbours; here crops of similar width share a shape (and so may share a batch) and the
recognized text is the same at any batch size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydantic import Field

from pipeline.imaging import prepare_image
from pipeline.media import Item, VideoFrame
from pipeline.modelcard import Preprocess, load_preprocess
from pipeline.stage import Stage, StageContext, StageParams, register_stage
from pipeline.tensors import PreparedTensor, to_host

VERTICAL_RATIO = 1.5
"""A crop this many times taller than wide is vertical text: PaddleOCR turns it 90° first."""


class TextCropsParams(StageParams):
    model: str
    """The recognizer's model card: its ``preprocess`` section gives the crop height (its size's
    first value), the default ``max_width`` (its second), color order and normalization."""
    detections: str | None = None
    """The ``text_detection`` stage whose boxes to crop; defaults to this stage's first input."""
    width_bucket: int = Field(default=32, ge=1)
    """Padded widths are multiples of this, so crops of similar width get the same shape."""
    max_width: int | None = Field(default=None, ge=1)
    """Widest tensor; wider crops are squeezed to it. Default: the card's width (320 for PP-OCR,
    which reads long lines better squeezed than at their natural width)."""


@register_stage("text_crops")
class TextCrops(Stage):
    Params = TextCropsParams
    params: TextCropsParams
    latency_key = "prepare"

    def check(self, base_dir: Path) -> None:
        self._configure(base_dir)

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self._configure(ctx.base_dir)
        self.detections_key = self.params.detections or ctx.input_stages[0]

    def _configure(self, base_dir: Path) -> None:
        _, self.spec = load_preprocess(self.params.model, base_dir)
        self.height = self.spec.size[0]
        self.max_width = self.params.max_width or self.spec.size[1]

    async def process(self, item: Item) -> Sequence[Item]:
        frame = item.media
        if not isinstance(frame, VideoFrame):
            return (item,)
        detection = item.results.get(self.detections_key)
        if not isinstance(detection, dict) or "boxes" not in detection:
            raise ValueError(
                f"no text boxes from stage {self.detections_key!r} on this item (is it a text_detection stage?)"
            )
        boxes: list[dict[str, Any]] = detection["boxes"]
        quads = [np.asarray(box["quad"], dtype=np.float32) for box in boxes]
        item.tensors[self.name] = await self.ctx.run_blocking(self._crops, frame, quads)
        return (item,)

    def _crops(self, frame: VideoFrame, quads: list[np.ndarray]) -> list[PreparedTensor]:
        image = to_host(frame.bgr())  # OpenCV warps on the CPU: a GPU frame is copied here, once
        return [
            prepare_crop(
                crop_quad(image, quad),
                height=self.height,
                max_width=self.max_width,
                width_bucket=self.params.width_bucket,
                spec=self.spec,
            )
            for quad in quads
        ]


def crop_quad(image: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """The 4x2 quad (clockwise from top-left, image pixels) warped into an upright rectangle.

    Its size is the longer of each pair of opposite sides, as in PaddleOCR's
    ``get_rotate_crop_image``; a crop at least ``VERTICAL_RATIO`` times taller than wide is turned
    90° counter-clockwise so that the recognizer reads it as a horizontal line.
    """
    quad = np.asarray(quad, dtype=np.float32)
    width = max(1, int(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[2] - quad[3]))))
    height = max(1, int(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2]))))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    transform = cv2.getPerspectiveTransform(quad, target)
    # Replicated borders: a box that reaches past the frame edge gets edge pixels, not black bars
    # the recognizer could read as a character.
    crop = cv2.warpPerspective(
        image, transform, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
    if height / width >= VERTICAL_RATIO:
        crop = np.ascontiguousarray(np.rot90(crop))
    return crop


def padded_width(
    crop_width: int, crop_height: int, *, height: int, max_width: int, width_bucket: int
) -> tuple[int, int]:
    """(resized width, padded width) of a crop scaled to ``height``: a function of the crop alone."""
    resized = min(max_width, max(1, math.ceil(height * crop_width / crop_height)))
    padded = min(max_width, math.ceil(resized / width_bucket) * width_bucket)
    return resized, padded


def prepare_crop(
    crop: np.ndarray, *, height: int, max_width: int, width_bucket: int, spec: Preprocess
) -> PreparedTensor:
    """BGR uint8 crop -> float32 tensor ``height`` high, zero-padded on the right to its bucket."""
    crop_height, crop_width = crop.shape[:2]
    resized, padded = padded_width(
        crop_width, crop_height, height=height, max_width=max_width, width_bucket=width_bucket
    )
    tensor = prepare_image(crop, (height, resized), "stretch", spec).data
    # Zeros in normalized space, as PaddleOCR pads (mid-grey under PP-OCR's normalization).
    width_axis = 2 if spec.layout == "NCHW" else 1
    pad = [(0, 0)] * tensor.ndim
    pad[width_axis] = (0, padded - resized)
    return PreparedTensor(np.pad(tensor, pad), geometry=None)
