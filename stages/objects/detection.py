"""``yolo``: objects from a YOLO detector's heads (the ``infer`` stage before it ran a card with a
``yolo:`` section, such as ``yolov4-tiny``): decoded as Darknet does, filtered (classes, scores
per class, box size, regions of interest), per-class NMS, and mapped to source-frame pixels.

Each object in the result is ``{"label", "score", "box": [x0, y0, x1, y1]}`` (pixels of the source
frame); a tracker after this stage adds ``track_id``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from pipeline.config import did_you_mean
from pipeline.errors import ConfigError
from pipeline.media import Item
from pipeline.modelcard import ModelCard, YoloSpec, load_model_card
from pipeline.modelstore import labels_path, model_path
from pipeline.stage import Stage, StageContext, StageParams, register_stage
from pipeline.tensors import ModelOutput

from .scene import Polygon, is_inside
from .yolo import DEFAULT_IOU, DEFAULT_THRESHOLD, Detections, decode, nms


class YoloParams(StageParams):
    model: str
    """The detector's model card (its ``yolo`` section and class names)."""
    input: str | None = None
    """The ``infer`` stage whose output to read; defaults to this stage's first input."""
    threshold: float = Field(default=DEFAULT_THRESHOLD, gt=0, lt=1)
    """Score (objectness x class) below which a detection is dropped."""
    thresholds: dict[str, float] = Field(default_factory=dict)
    """Per class name, a threshold of its own (``{person: 0.5}``)."""
    classes: list[str] | None = None
    """Keep only these class names (all when not given)."""
    iou: float = Field(default=DEFAULT_IOU, gt=0, le=1)
    """Within a class, a box overlapping a better one by more than this is dropped (NMS)."""
    min_size: float = Field(default=0, ge=0)
    """Boxes whose shorter side is smaller (source pixels) are dropped."""
    max_size: float | None = Field(default=None, gt=0)
    """Boxes whose longer side is larger (source pixels) are dropped."""
    roi: list[Polygon] = Field(default_factory=list)
    """Regions of interest, polygons in source pixels: a box is kept only if its center is inside
    one (none: the whole frame)."""
    max_objects: int = Field(default=100, ge=1)


@register_stage("yolo")
class YoloDetection(Stage):
    Params = YoloParams
    params: YoloParams
    latency_key = "post"

    def check(self, base_dir: Path) -> None:
        self._spec(load_model_card(self.params.model, base_dir))

    def _spec(self, card: ModelCard) -> YoloSpec:
        if card.yolo is None or card.preprocess is None:
            raise ConfigError("params.model", f"model {card.name!r} has no yolo and preprocess sections")
        return card.yolo

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self.source_key = self.params.input or ctx.input_stages[0]
        card = load_model_card(self.params.model, ctx.base_dir)
        self.spec = self._spec(card)
        assert card.preprocess is not None
        self.input_size = (card.preprocess.size[0], card.preprocess.size[1])
        await ctx.run_blocking(model_path, card)  # pulled (with its names) if it is not yet
        self.labels = labels_path(card).read_text().splitlines()[: self.spec.classes]
        if len(self.labels) != self.spec.classes:
            raise ConfigError(
                "params.model", f"{labels_path(card)} names {len(self.labels)} of {self.spec.classes} classes"
            )
        self.model_name = card.name
        self.keep = self._class_mask("params.classes", self.params.classes or self.labels)
        self.floor = np.full(self.spec.classes, self.params.threshold, np.float32)
        for name, value in self.params.thresholds.items():
            self.floor[self._class_index(f"params.thresholds.{name}", name)] = value
        self.roi = [np.asarray(polygon, np.float32) for polygon in self.params.roi]

    def _class_index(self, path: str, name: str) -> int:
        if name not in self.labels:
            raise ConfigError(path, f"unknown class {name!r}{did_you_mean(name, self.labels)}")
        return self.labels.index(name)

    def _class_mask(self, path: str, names: list[str]) -> np.ndarray:
        mask = np.zeros(self.spec.classes, bool)
        for index, name in enumerate(names):
            mask[self._class_index(f"{path}[{index}]", name)] = True
        return mask

    async def process(self, item: Item) -> Sequence[Item]:
        output = item.tensors.pop(self.source_key, None)
        if not isinstance(output, ModelOutput):
            raise ValueError(f"no model output from stage {self.source_key!r} on this item (is it an infer stage?)")
        objects = await self.ctx.run_blocking(self.objects, output)
        item.results[self.name] = {"type": "object_detection", "model": self.model_name, "objects": objects}
        return (item,)

    def objects(self, output: ModelOutput) -> list[dict[str, Any]]:
        """The kept objects of one image, best first (blocking: numpy work)."""
        floor = float(self.floor.min())
        found = decode(output.outputs, self.spec, self.input_size, floor)
        found = found.take(self.keep[found.classes] & (found.scores > self.floor[found.classes]))
        found = nms(found, self.params.iou)
        boxes = self._to_source(found, output)
        keep = self._sized(boxes) & self._inside_roi(boxes)
        found, boxes = found.take(keep), boxes[keep]
        return [
            {
                "label": self.labels[int(cls)],
                "score": round(float(score), 4),
                "box": [round(float(v), 1) for v in box],
            }
            for cls, score, box in zip(found.classes, found.scores, boxes, strict=True)
        ][: self.params.max_objects]

    def _to_source(self, found: Detections, output: ModelOutput) -> np.ndarray:
        """Normalized boxes -> source-frame pixels (through the tensor's geometry)."""
        height, width = self.input_size
        corners = found.boxes.reshape(-1, 2, 2) * np.array([width, height], np.float32)
        if output.geometry is not None:
            corners = output.geometry.to_source(corners)
        return corners.reshape(-1, 4)

    def _sized(self, boxes: np.ndarray) -> np.ndarray:
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        keep: np.ndarray = np.minimum(widths, heights) >= self.params.min_size
        if self.params.max_size is not None:
            keep &= np.maximum(widths, heights) <= self.params.max_size
        return keep

    def _inside_roi(self, boxes: np.ndarray) -> np.ndarray:
        if not self.roi:
            return np.ones(len(boxes), bool)
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        return np.array([any(is_inside(p, (float(x), float(y))) for p in self.roi) for x, y in centers], bool)
