"""``overlay``: what the stages before it found, drawn on a copy of the frame, for the stages
after it that show video (``mp4``, ``view``; ``pipeline.pictures``).

It draws from the item's results, as they will be published (``draw.py``), with each
``object_events`` stage's zones and lines, and a status line (stream, frames per second over the
last second of media, latency so far). Drawing runs in the thread pool, and only when a stage
after it wants this stream's pictures now (``always: true`` draws every frame): a frame nobody
records or watches costs nothing here. The frame itself is left as it was; the drawing goes on
as ``item.tensors[<this stage>]`` (a ``Picture``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

import numpy as np

from pipeline.media import EndOfStream, Item, VideoFrame
from pipeline.pictures import Picture, SceneGeometry, anyone_wants, picture_of
from pipeline.stage import Stage, StageContext, StageParams, register_stage

from .draw import draw_results


class OverlayParams(StageParams):
    status: bool = True
    """Draw the status line (stream, fps, latency) at the bottom left."""
    always: bool = False
    """Draw every frame, watched or not (for a stage of your own after this one)."""


@register_stage("overlay")
class Overlay(Stage):
    Params = OverlayParams
    params: OverlayParams
    latency_key = "overlay"

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self.recent: dict[str, deque[float]] = {}  # stream -> media times of its last second
        self.drawn = 0
        self.skipped = 0

    def wants_pictures(self, stream_id: str) -> bool:
        """An overlay before another passes the question on (it draws for whoever wants)."""
        return self.params.always or anyone_wants(self.ctx.consumers, stream_id)

    async def process(self, item: Item) -> Sequence[Item]:
        frame = item.media
        if not isinstance(frame, VideoFrame):
            return (item,)
        status = self._status(item, frame) if self.params.status else None
        if not self.wants_pictures(item.stream_id):
            self.skipped += 1
            return (item,)
        scenes = [t for t in item.tensors.values() if isinstance(t, SceneGeometry)]
        image = await self.ctx.run_blocking(_drawn, item, scenes, status)
        item.tensors[self.name] = Picture(image)
        self.drawn += 1
        item.mark("overlay")
        return (item,)

    def _status(self, item: Item, frame: VideoFrame) -> str:
        recent = self.recent.setdefault(item.stream_id, deque())
        recent.append(frame.time_s)
        while recent and recent[0] < frame.time_s - 1.0:
            recent.popleft()
        latency_ms = max(0.0, (time.time() - item.capture_time) * 1000.0)
        return f"{item.stream_id}  #{item.seq}  {len(recent)} fps  {latency_ms:.0f} ms"

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        self.recent.pop(eos.stream_id, None)
        return ()


def _drawn(item: Item, scenes: list[SceneGeometry], status: str | None) -> np.ndarray:
    source = picture_of(item)  # an overlay before this one's drawing, or the frame
    assert source is not None  # a video frame
    image = np.array(source, copy=True)  # the frame stays as decoded: other stages may read it
    draw_results(image, item.results, scenes, status)
    return image
