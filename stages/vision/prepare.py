"""``prepare``: frames to model tensors (resize or letterbox, color order, normalize, layout).

The geometry of the resize travels with the tensor, so post-processing can map model
coordinates back to source-frame pixels. With ``latency_budget_ms`` a frame already older than
that is dropped (``late:<stage>``) before it costs any work. An ``infer`` stage fed frames
prepares them itself (the same way, ``pipeline.imaging``), which on live streams spares the work
for frames it drops: in front of a model, ``prepare`` is only needed for a tensor another stage
reads too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field

from pipeline import imaging
from pipeline.media import Item, VideoFrame, overdue_ms
from pipeline.modelcard import load_preprocess
from pipeline.stage import Stage, StageContext, StageParams, register_stage


class PrepareParams(StageParams):
    model: str
    """Model card whose ``preprocess`` section says how to prepare its input."""
    size: list[int] | None = Field(default=None, min_length=2, max_length=2)
    """[height, width] of the tensor; defaults to the card's size."""
    resize: Literal["stretch", "letterbox"] | None = None
    """Defaults to the card's choice."""
    latency_budget_ms: float | None = Field(default=None, gt=0)
    """Frames older than this (since capture) are dropped before preparing (live)."""


@register_stage("prepare")
class Prepare(Stage):
    """Prepares every frame it gets, in the thread pool, for any stage that reads the tensor. An
    ``infer`` fed frames directly prepares them itself, and on live streams only the frames its
    model runs: the better choice in front of a model."""

    Params = PrepareParams
    params: PrepareParams
    latency_key = "prepare"

    def check(self, base_dir: Path) -> None:
        self._configure(base_dir)

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self._configure(ctx.base_dir)

    def takes_device_arrays(self) -> bool:
        # A device frame is prepared on the device, and worth it only for a model there.
        return self.feeds_the_gpu()

    def _configure(self, base_dir: Path) -> None:
        card, self.spec = load_preprocess(self.params.model, base_dir)
        self.size = imaging.tensor_size(card, self.spec, self.params.size)
        self.resize = self.params.resize or self.spec.resize

    async def process(self, item: Item) -> Sequence[Item]:
        frame = item.media
        if not isinstance(frame, VideoFrame):
            return (item,)
        if overdue_ms(item.capture_time, self.params.latency_budget_ms) is not None:
            self.ctx.stats.drop_item(item, f"late:{self.name}")
            return ()
        item.tensors[self.name] = await self.ctx.run_blocking(
            imaging.prepare_frame, frame, self.size, self.resize, self.spec
        )
        return (item,)
