"""``track_crops``: crops of the tracked objects a second model should look at on this frame —
the new tracks and the changed ones, not every object on every frame (DeepStream's secondary
GIE pattern).

A track is cropped when it is new, when its box has moved or changed size so that it overlaps
the box it was last cropped at by less than ``changed_iou``, when its label changed, and (with
``refresh_s``) when its last crop is that old. At most ``max_per_frame`` crops are made on a
frame: new tracks first, then the most changed; the others wait for a later frame.

The crops go to the next ``infer`` stage as a list in ``item.tensors[<this stage>]``; the
result ``{"type": "track_crops", "boxes": [...]}`` says which tracks they are of (each box with
its ``track_id``), so that a decoding stage (``text_recognition``'s ``detections``) can pair its
outputs with tracks and ``track_attributes`` can keep them per track. A crop is a text box's
quad warped upright where the object has one, else its box; it is sized for the card's input:
a model with a dynamic width (a text recognizer) gets the card's height and the crop's aspect
ratio (``pipeline/crops.py``), a fixed-size one the card's size and resize mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from pipeline.boxes import iou_matrix
from pipeline.crops import crop_box, crop_quad, prepare_crop
from pipeline.imaging import prepare_image
from pipeline.media import EndOfStream, Item, VideoFrame
from pipeline.modelcard import load_preprocess
from pipeline.stage import Stage, StageContext, StageParams, register_stage
from pipeline.tensors import PreparedTensor, to_host

from .tracking import tracked_objects

CROP_KEYS = ("track_id", "label", "box", "quad", "score")
"""What the result says of each cropped track (not its age and velocity: those are the track's)."""


class TrackCropsParams(StageParams):
    model: str
    """The second model's card: its ``preprocess`` section says how a crop becomes its input."""
    tracks: str | None = None
    """The ``track`` stage (default: this stage's first input)."""
    labels: list[str] | None = None
    """Crop only objects of these classes (default: every tracked object)."""
    changed_iou: float = Field(default=0.6, gt=0, le=1)
    """A track is cropped again when its box overlaps the box of its last crop by less than this."""
    refresh_s: float | None = Field(default=None, gt=0)
    """A track is cropped again when its last crop is this many media seconds old (default: never)."""
    max_per_frame: int = Field(default=8, ge=1)
    """The most crops on one frame: a bound on the second model's work when many tracks start at once."""
    width_bucket: int = Field(default=32, ge=1)
    """For a dynamic-width model: padded widths are multiples of this (as ``text_crops``)."""


@dataclass(frozen=True, slots=True)
class LastCrop:
    """What a track looked like when it was last cropped."""

    box: np.ndarray
    label: str
    at_s: float


@register_stage("track_crops")
class TrackCrops(Stage):
    Params = TrackCropsParams
    params: TrackCropsParams
    latency_key = "prepare"

    def check(self, base_dir: Path) -> None:
        self._configure(base_dir)

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self._configure(ctx.base_dir)
        self.tracks_key = self.params.tracks or ctx.input_stages[0]
        self.last: dict[str, dict[int, LastCrop]] = {}  # stream -> track -> its last crop

    def _configure(self, base_dir: Path) -> None:
        self.card, self.spec = load_preprocess(self.params.model, base_dir)
        shape = self.card.inputs[0].shape
        width = shape[-1] if self.spec.layout == "NCHW" else shape[-2]
        # A text recognizer's width follows its crop; a classifier's input is one fixed size.
        self.dynamic_width = not isinstance(width, int)

    async def process(self, item: Item) -> Sequence[Item]:
        frame = item.media
        if not isinstance(frame, VideoFrame):
            return (item,)
        update, objects = tracked_objects(item, self.tracks_key)
        last = self.last.setdefault(item.stream_id, {})
        for track_id in update.track_ids:
            last.pop(track_id, None)
        at_s = frame.time_s
        chosen = choose(objects, last, at_s, self.params)
        for obj in chosen:
            last[obj["track_id"]] = LastCrop(np.asarray(obj["box"], np.float64), obj.get("label", ""), at_s)
        item.tensors[self.name] = await self.ctx.run_blocking(self._crops, frame, chosen)
        boxes = [{key: obj[key] for key in CROP_KEYS if key in obj} for obj in chosen]
        item.results[self.name] = {"type": "track_crops", "model": self.card.name, "boxes": boxes}
        return (item,)

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        self.last.pop(eos.stream_id, None)
        return ()

    def _crops(self, frame: VideoFrame, objects: list[dict[str, Any]]) -> list[PreparedTensor]:
        if not objects:
            return []
        image = to_host(frame.bgr())  # OpenCV crops on the CPU: a GPU frame is copied here, once
        return [self._prepare(_cut(image, obj)) for obj in objects]

    def _prepare(self, crop: np.ndarray) -> PreparedTensor:
        height, width = self.spec.size
        if self.dynamic_width:
            return prepare_crop(
                crop, height=height, max_width=width, width_bucket=self.params.width_bucket, spec=self.spec
            )
        tensor = prepare_image(crop, (height, width), self.spec.resize, self.spec)
        return PreparedTensor(tensor.data, geometry=None)  # the crop's geometry is not the frame's


def _cut(image: np.ndarray, obj: dict[str, Any]) -> np.ndarray:
    if "quad" in obj:
        return crop_quad(image, np.asarray(obj["quad"], np.float32))
    return crop_box(image, obj["box"])


def choose(
    objects: list[dict[str, Any]], last: dict[int, LastCrop], at_s: float, params: TrackCropsParams
) -> list[dict[str, Any]]:
    """The objects to crop on this frame: new tracks in their order, then changed ones, most
    changed first (least overlap with their last crop), at most ``max_per_frame``."""
    new: list[dict[str, Any]] = []
    changed: list[tuple[float, dict[str, Any]]] = []
    for obj in objects:
        if params.labels is not None and obj.get("label") not in params.labels:
            continue
        before = last.get(obj["track_id"])
        if before is None:
            new.append(obj)
            continue
        overlap = float(iou_matrix(before.box[None], np.asarray(obj["box"], np.float64)[None])[0, 0])
        stale = params.refresh_s is not None and at_s - before.at_s >= params.refresh_s
        if overlap < params.changed_iou or stale or obj.get("label", "") != before.label:
            changed.append((overlap, obj))
    changed.sort(key=lambda pair: pair[0])
    return (new + [obj for _, obj in changed])[: params.max_per_frame]
