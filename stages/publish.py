"""``publish``: one JSON result per item to NATS, and stream lifecycle events (``started``,
a live source's ``connecting``/``connected``/``stalled``/``reconnecting``, ``error``, ``ended``)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pipeline.bus import Bus
from pipeline.errors import ConfigError
from pipeline.media import EndOfStream, Item, StreamInfo, StreamStatus
from pipeline.results import build_event, build_result, encode, events_subject, message_id, result_subject
from pipeline.stage import Stage, StageContext, StageParams, register_stage


class PublishParams(StageParams):
    events: bool = True
    """Also publish stream lifecycle events on ``<subject>.events``."""


@register_stage("publish")
class Publish(Stage):
    Params = PublishParams
    params: PublishParams
    latency_key = None  # publish time is measured into the message itself

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        if ctx.bus is None:
            raise ConfigError(f"stage {self.name}", "publish needs a NATS connection (nats.url)")
        self.bus: Bus = ctx.bus

    async def on_stream_added(self, info: StreamInfo) -> None:
        await self._event(info.stream_id, "started")

    async def on_stream_status(self, status: StreamStatus) -> None:
        await self._event(status.stream_id, status.status, message=status.detail)

    async def process(self, item: Item) -> Sequence[Item]:
        began = time.perf_counter()
        counters = self.ctx.stats.stream(item.stream_id)
        publish_ms = (time.perf_counter() - began) * 1000.0
        message = build_result(self.ctx.pipeline, item, counters, publish_ms, self.ctx.latency_keys)
        payload = encode(message)
        subject = result_subject(self.bus.prefix, self.ctx.pipeline, item.stream_id)
        await self.bus.publish(subject, payload, msg_id=message_id(self.ctx.pipeline, item.stream_id, item.seq))
        counters.published += 1
        self.ctx.metrics.observe_published(item, message["latency_ms"])
        return ()

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        counters = self.ctx.stats.stream(eos.stream_id)
        counters.ended = True
        if eos.reason == "error":
            await self._event(eos.stream_id, "error", message=eos.error or "unknown error")
        await self._event(eos.stream_id, "ended", reason=eos.reason)
        return ()

    async def _event(
        self, stream_id: str, event: str, *, reason: str | None = None, message: str | None = None
    ) -> None:
        if not self.params.events:
            return
        counters = self.ctx.stats.stream(stream_id) if event == "ended" else None
        body = build_event(self.ctx.pipeline, stream_id, event, reason=reason, message=message, counters=counters)
        await self.bus.publish(events_subject(self.bus.prefix, self.ctx.pipeline, stream_id), encode(body))
