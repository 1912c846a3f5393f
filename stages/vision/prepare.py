"""``prepare``: frames to model tensors (resize or letterbox, color order, normalize, layout).

The geometry of the resize travels with the tensor, so post-processing can map model
coordinates back to source-frame pixels. With ``latency_budget_ms`` a frame already older than
that is dropped (``late:<stage>``) before it costs any work. On a live stream the work is left to
``infer`` (``DeferredTensor``), which prepares only the frames it is about to run, when every stage
this one feeds prepares such frames itself (``Stage.takes_deferred_from``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field

from pipeline import imaging
from pipeline.errors import ConfigError
from pipeline.media import EndOfStream, Item, StreamInfo, VideoFrame, overdue_ms
from pipeline.modelcard import load_preprocess
from pipeline.stage import Stage, StageContext, StageParams, register_stage
from pipeline.tensors import DeferredTensor


class PrepareParams(StageParams):
    model: str
    """Model card whose ``preprocess`` section says how to prepare its input."""
    size: list[int] | None = Field(default=None, min_length=2, max_length=2)
    """[height, width] of the tensor; defaults to the card's size."""
    resize: Literal["stretch", "letterbox"] | None = None
    """Defaults to the card's choice."""
    latency_budget_ms: float | None = Field(default=None, gt=0)
    """Frames older than this (since capture) are dropped before preparing (live)."""
    defer: Literal["live", "always", "never"] = "live"
    """When to leave the work to ``infer``, which prepares a frame just before the model runs it
    (``DeferredTensor``): on live streams (most of their frames are dropped before the model when
    it cannot keep up) when every stage this one feeds is an ``infer``, always, or never (prepare
    here, in the thread pool, in parallel)."""


@register_stage("prepare")
class Prepare(Stage):
    Params = PrepareParams
    params: PrepareParams
    latency_key = "prepare"

    def check(self, base_dir: Path) -> None:
        self._configure(base_dir)

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self._configure(ctx.base_dir)
        others = [stage.name for stage in ctx.consumers if not stage.takes_deferred_from(self.name)]
        # A stage that reads the tensor itself would get a frame to prepare (on the event loop,
        # if it reads ``data`` in ``process``): only stages that prepare it themselves get one.
        self._may_defer = bool(ctx.consumers) and not others
        if self.params.defer == "live" and others:
            ctx.logger.info("live frames are prepared here: %s do(es) not prepare them itself", ", ".join(others))

    def takes_device_arrays(self) -> bool:
        # A device frame is prepared on the device, and worth it only for a model there.
        return any(stage.takes_device_arrays() for stage in self.ctx.consumers)

    def _configure(self, base_dir: Path) -> None:
        card, self.spec = load_preprocess(self.params.model, base_dir)
        height, width = self.params.size or self.spec.size
        multiple = self.spec.multiple_of
        if height % multiple or width % multiple:
            raise ConfigError("params.size", f"[{height}, {width}]: model {card.name!r} needs multiples of {multiple}")
        self.size = (height, width)
        self.resize = self.params.resize or self.spec.resize
        self._live: set[str] = set()

    async def on_stream_added(self, info: StreamInfo) -> None:
        if info.live:
            self._live.add(info.stream_id)

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        self._live.discard(eos.stream_id)
        return ()

    async def process(self, item: Item) -> Sequence[Item]:
        frame = item.media
        if not isinstance(frame, VideoFrame):
            return (item,)
        if overdue_ms(item.capture_time, self.params.latency_budget_ms) is not None:
            self.ctx.stats.drop_item(item, f"late:{self.name}")
            return ()
        defer = self.params.defer
        if defer == "always" or (defer == "live" and self._may_defer and item.stream_id in self._live):
            item.tensors[self.name] = self._deferred(frame)
        else:
            item.tensors[self.name] = await self.ctx.run_blocking(
                imaging.prepare_frame, frame, self.size, self.resize, self.spec
            )
        return (item,)

    def _deferred(self, frame: VideoFrame) -> DeferredTensor:
        height, width = self.size
        size, resize, spec = self.size, self.resize, self.spec
        return DeferredTensor(
            lambda: imaging.prepare_frame(frame, size, resize, spec).data,
            shape=(3, height, width) if spec.layout == "NCHW" else (height, width, 3),
            geometry=imaging.fit_geometry(frame.width, frame.height, size, resize),
        )
