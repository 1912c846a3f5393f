"""``object_events``: what tracked objects do, as events on the stream's events subject
(``<prefix>.<pipeline>.<stream>.events``, the same as ``started``/``ended``): ``object_entered``,
``object_left``, ``zone_entered`` / ``zone_left`` (with the zone's count per class),
``line_crossed`` (with its direction and the line's counts) (``scene.py``).

Each object's best frame (its highest score) is kept as a JPEG crop (longest side at most
``crop_max_side``) and stored in a JetStream object store bucket: the ``object_entered`` event
references the first crop, ``object_left`` the best one (put under the same name: a reader gets
the best so far). The reference is ``{"bucket", "name"}``; ``nats object get <bucket> <name>``
fetches it. Without JetStream on the server, events go out without crops (a warning says so once).
Crops are stored in the background, a bounded number at a time: one that would exceed it is
skipped and counted, never waited for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import cv2
from nats.js.errors import BucketNotFoundError
from pydantic import Field

from pipeline.bus import Bus
from pipeline.errors import ConfigError
from pipeline.media import EndOfStream, Item, VideoFrame
from pipeline.results import build_event, encode, events_subject, new_run_id
from pipeline.stage import Stage, StageContext, StageParams, register_stage

from .scene import Anchor, Polygon, Scene, Segment
from .tracking import TracksEnded

log = logging.getLogger("streamgraph.objects")


class ObjectEventsParams(StageParams):
    objects: str | None = None
    """The stage whose result holds the tracked objects (default: the first ``object_detection``
    result on the item)."""
    tracks: str | None = None
    """The ``track`` stage (default: this stage's first input)."""
    zones: dict[str, Polygon] = Field(default_factory=dict)
    """Named polygons in source pixels."""
    lines: dict[str, Segment] = Field(default_factory=dict)
    """Named segments, two points each, in source pixels."""
    anchor: Anchor = "bottom"
    """Which point of a box is where the object is: its ``bottom`` center or its ``center``."""
    min_frames: int = Field(default=2, ge=1)
    """Frames a track must be seen on before it enters the scene (``object_entered``): a
    detection that flickers for fewer frames makes no events at all."""
    crops: bool = True
    crop_bucket: str | None = None
    """The object store bucket (default ``sg-<pipeline>-crops``)."""
    crop_max_side: int = Field(default=256, ge=16)
    crop_quality: int = Field(default=80, ge=10, le=100)
    crop_ttl_s: float = Field(default=86400.0, gt=0)
    """How long the bucket keeps a crop."""
    max_pending_crops: int = Field(default=8, ge=1)


@register_stage("object_events")
class ObjectEvents(Stage):
    Params = ObjectEventsParams
    params: ObjectEventsParams
    latency_key = "events"

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        if ctx.bus is None:
            raise ConfigError(f"stage {self.name}", "object_events needs a NATS connection (nats.url)")
        self.bus: Bus = ctx.bus
        self.tracks_key = self.params.tracks or ctx.input_stages[0]
        self.scenes: dict[str, Scene] = {}
        self.runs: dict[str, tuple[str, int]] = {}  # stream -> (its token in message ids, events so far)
        self.best: dict[tuple[str, int], tuple[float, bytes]] = {}  # (stream, track) -> (score, JPEG)
        self.store: Any = None
        self.pending: set[asyncio.Task[None]] = set()
        self.crops_skipped = 0
        self.bucket = self.params.crop_bucket or f"sg-{ctx.pipeline}-crops"
        if self.params.crops:
            self.store = await self._open_store()

    async def _open_store(self) -> Any:
        js = self.bus.client.jetstream()
        try:
            try:
                return await js.object_store(self.bucket)
            except BucketNotFoundError:
                return await js.create_object_store(bucket=self.bucket, ttl=self.params.crop_ttl_s)
        except Exception as exc:
            log.warning("stage %s: no crops (the object store %s: %s)", self.name, self.bucket, exc)
            return None

    async def process(self, item: Item) -> Sequence[Item]:
        result = self._objects_result(item)
        ended = item.tensors.get(self.tracks_key)  # left for the stages after this one
        objects = result["objects"] if result is not None else []
        scene = self.scenes.get(item.stream_id)
        if scene is None:
            p = self.params
            scene = self.scenes[item.stream_id] = Scene(p.zones, p.lines, p.anchor, p.min_frames)
        events = scene.update(objects, ended.track_ids if isinstance(ended, TracksEnded) else [])
        if scene.zones or scene.lines:
            item.tensors[self.name] = scene.geometry()  # for an overlay to draw
        if self.store is not None and objects and isinstance(item.media, VideoFrame):
            await self._keep_best_crops(item, objects, events)
        at_s = item.media.time_s if isinstance(item.media, VideoFrame) else None
        for event in events:
            self._publish(item.stream_id, event, at_s)
        return (item,)

    def _objects_result(self, item: Item) -> dict[str, Any] | None:
        if self.params.objects is not None:
            found = item.results.get(self.params.objects)
            return found if isinstance(found, dict) else None
        return next(
            (r for r in item.results.values() if isinstance(r, dict) and r.get("type") == "object_detection"), None
        )

    async def _keep_best_crops(self, item: Item, objects: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
        better = [o for o in objects if o["score"] > self.best.get((item.stream_id, o["track_id"]), (0.0, b""))[0]]
        if not better:
            return
        frame = item.media
        assert isinstance(frame, VideoFrame)
        crops = await self.ctx.run_blocking(self._crops, frame, better)
        for obj, jpeg in zip(better, crops, strict=True):
            if jpeg is not None:
                self.best[(item.stream_id, obj["track_id"])] = (obj["score"], jpeg)
        for event in events:
            if event["event"] == "object_entered":
                event["crop"] = self._store_crop(item.stream_id, event["track_id"])

    def _crops(self, frame: VideoFrame, objects: list[dict[str, Any]]) -> list[bytes | None]:
        """JPEG crops of ``objects`` (blocking: pixels and encoding)."""
        image = frame.bgr()
        height, width = image.shape[:2]
        crops: list[bytes | None] = []
        for obj in objects:
            x0, y0, x1, y1 = (round(v) for v in obj["box"])
            patch = image[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)]
            if patch.size == 0:
                crops.append(None)
                continue
            scale = self.params.crop_max_side / max(patch.shape[:2])
            if scale < 1:
                patch = cv2.resize(patch, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            ok, jpeg = cv2.imencode(".jpg", patch, [cv2.IMWRITE_JPEG_QUALITY, self.params.crop_quality])
            crops.append(jpeg.tobytes() if ok else None)
        return crops

    def _store_crop(self, stream_id: str, track_id: int) -> dict[str, str] | None:
        """Put the track's best crop so far (in the background); its reference, or None."""
        best = self.best.get((stream_id, track_id))
        if self.store is None or best is None:
            return None
        if len(self.pending) >= self.params.max_pending_crops:
            self.crops_skipped += 1
            return None
        name = f"{stream_id}/{track_id}.jpg"
        task = asyncio.ensure_future(self._put(name, best[1]))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        return {"bucket": self.bucket, "name": name}

    async def _put(self, name: str, data: bytes) -> None:
        try:
            await self.store.put(name, data)
        except Exception as exc:
            log.warning("stage %s: crop %s not stored: %s", self.name, name, exc)

    def _publish(self, stream_id: str, event: dict[str, Any], at_s: float | None) -> None:
        if event["event"] == "object_left":
            event["crop"] = self._store_crop(stream_id, event["track_id"])
            self.best.pop((stream_id, event["track_id"]), None)
        if event.get("crop") is None:
            event.pop("crop", None)
        token, count = self.runs.get(stream_id) or (new_run_id(), 0)
        self.runs[stream_id] = (token, count + 1)
        rest = {key: value for key, value in event.items() if key != "event"}
        if at_s is not None:
            rest["media_time_s"] = round(at_s, 6)
        body = build_event(self.ctx.pipeline, stream_id, event["event"], fields=rest)
        subject = events_subject(self.bus.prefix, self.ctx.pipeline, stream_id)
        payload = encode(body)
        self.bus.put(subject, payload, msg_id=f"{self.ctx.pipeline}.{stream_id}.{token}.o{count}")
        self.ctx.sinks.event(stream_id, body, payload)

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        scene = self.scenes.pop(eos.stream_id, None)
        if scene is not None:
            for event in scene.end():
                self._publish(eos.stream_id, event, None)
        self.runs.pop(eos.stream_id, None)
        return ()

    async def stop(self) -> None:
        if self.pending:
            await asyncio.wait(self.pending, timeout=5.0)
        if self.crops_skipped:
            limit = self.params.max_pending_crops
            log.warning("stage %s: %d crops skipped (max_pending_crops=%d)", self.name, self.crops_skipped, limit)
        await super().stop()
