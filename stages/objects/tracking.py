"""``track``: multi-object tracking per stream (ByteTrack's association over a Kalman filter per
track, ``bytetrack.py``) on a detection stage's objects (``yolo``) or boxes (``text_detection``:
one class, no labels).

The objects of the detection stage's result are replaced by the tracked ones, each with
``track_id`` (an integer, stable while the object stays in view; unique within the stream),
``age_s`` (media seconds since its track began) and ``velocity`` (its center's, pixels per second
of media time). A low-score detection that continues no track is dropped, as ByteTrack does. A
stream's tracks live as long as the stream: its end releases them.

The ids of the tracks that ended on a frame go to the stages after this one (``object_events``)
in ``item.tensors[<this stage>]`` (a ``TracksEnded``, which also names where the tracked objects
are: ``tracked_objects``), never into the published message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from pipeline.media import EndOfStream, Item
from pipeline.stage import Stage, StageContext, StageParams, register_stage

from .bytetrack import ByteTracker, Track


@dataclass(frozen=True)
class TracksEnded:
    """The tracks that ended on this frame (missed for longer than ``lost_frames``)."""

    track_ids: list[int]
    source: str = ""
    """The detection stage whose result holds the tracked objects (``tracked_objects``)."""


class TrackParams(StageParams):
    input: str | None = None
    """The detection stage whose objects to track; defaults to this stage's first input."""
    high: float = Field(default=0.5, gt=0, lt=1)
    """Detections scoring this or more are matched first, and may start tracks."""
    low: float = Field(default=0.1, ge=0, lt=1)
    """Detections between ``low`` and ``high`` may only continue a track seen on the last frame."""
    new_track: float = Field(default=0.6, gt=0, le=1)
    """An unmatched detection starts a track only when it scores this or more."""
    match_iou: float = Field(default=0.2, gt=0, le=1)
    """The least overlap of a predicted track box and a high-score detection to match them."""
    low_match_iou: float = Field(default=0.5, gt=0, le=1)
    lost_frames: int = Field(default=30, ge=0)
    """Frames a track may go unseen (an occlusion) before it ends."""


@register_stage("track")
class ObjectTracking(Stage):
    Params = TrackParams
    params: TrackParams
    latency_key = "track"

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self.source_key = self.params.input or ctx.input_stages[0]
        self.trackers: dict[str, ByteTracker] = {}

    def _tracker(self, stream_id: str) -> ByteTracker:
        tracker = self.trackers.get(stream_id)
        if tracker is None:
            p = self.params
            tracker = self.trackers[stream_id] = ByteTracker(
                high=p.high,
                low=p.low,
                new_track=p.new_track,
                match_iou=p.match_iou,
                low_match_iou=p.low_match_iou,
                lost_frames=p.lost_frames,
            )
        return tracker

    async def process(self, item: Item) -> Sequence[Item]:
        result = item.results.get(self.source_key)
        key = tracked_key(result)
        if result is None or key is None:
            raise ValueError(
                f"no objects or boxes from stage {self.source_key!r} on this item (is it a detection stage?)"
            )
        objects: list[dict[str, Any]] = result[key]
        boxes = np.array([o["box"] for o in objects], np.float64).reshape(-1, 4)
        scores = np.array([o["score"] for o in objects], np.float64)
        media = item.media
        at_s = float(media.pts * media.time_base) if media.pts is not None else float(item.seq)
        labels = [o.get("label", "") for o in objects]  # text boxes have none: one class
        update = self._tracker(item.stream_id).update(boxes, scores, labels, at_s)
        result[key] = [
            _tracked(found, track, at_s) for found, track in zip(objects, update.tracked, strict=True) if track
        ]
        item.tensors[self.name] = TracksEnded([track.track_id for track in update.ended], self.source_key)
        return (item,)

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        tracker = self.trackers.pop(eos.stream_id, None)
        if tracker is not None:
            tracker.end_all()
        return ()


def tracked_objects(item: Item, tracks_key: str) -> tuple[TracksEnded, list[dict[str, Any]]]:
    """For a stage after ``track``: the track stage's ended tracks and the tracked objects (or
    text boxes) of this item, each with its ``track_id``."""
    update = item.tensors.get(tracks_key)
    if not isinstance(update, TracksEnded):
        raise ValueError(f"no tracks from stage {tracks_key!r} on this item (is it a track stage?)")
    result = item.results.get(update.source)
    key = tracked_key(result)
    assert result is not None and key is not None, "the track stage checked it"
    objects: list[dict[str, Any]] = result[key]
    return update, objects


def tracked_key(result: Any) -> str | None:
    """Where a detection result keeps what ``track`` tracks: ``objects`` (``yolo``) or ``boxes``
    (``text_detection``); None when it has neither."""
    if not isinstance(result, dict):
        return None
    return next((key for key in ("objects", "boxes") if isinstance(result.get(key), list)), None)


def _tracked(found: dict[str, Any], track: Track, at_s: float) -> dict[str, Any]:
    vx, vy = track.velocity
    return {
        **found,
        "track_id": track.track_id,
        "age_s": round(at_s - track.first_seen_s, 3),
        "velocity": [round(vx, 1), round(vy, 1)],
    }
