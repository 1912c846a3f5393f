"""``text_crops``: cut each detected text box out of the frame as a recognizer input, as
PaddleOCR prepares them (``pipeline/crops.py``: the quad warped upright, resized to the model's
height keeping its aspect ratio, normalized, right-padded).

The padded width is a property of the crop alone: its resized width rounded up to a multiple of
``width_bucket``, capped at ``max_width`` (wider crops are squeezed to fit, as PaddleOCR does).
PaddleOCR instead pads every crop of a batch to the batch's widest, so a crop's result depends on
its neighbours; here crops of similar width share a shape (and so may share a batch) and the
recognized text is the same at any batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from pipeline.crops import crop_quad, prepare_crop
from pipeline.media import Item, VideoFrame
from pipeline.modelcard import load_preprocess
from pipeline.stage import Stage, StageContext, StageParams, register_stage
from pipeline.tensors import PreparedTensor, to_host


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
