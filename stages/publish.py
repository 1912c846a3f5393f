"""``publish``: one JSON result per item to NATS, and stream lifecycle events (``started``,
a live source's ``connecting``/``connected``/``stalled``/``reconnecting``, ``error``, ``ended``);
both also to the pipeline's ``sinks:`` (``pipeline.sinks``), which never make it wait.

Both go through the bus's outbox (``pipeline.outbox``). A result counts as ``published`` when the
outbox has sent it (JetStream: acknowledged), and as dropped (``error:<stage>:<why>``, or
``bus_down`` on core NATS) when the outbox gives up on it. On JetStream a full outbox makes this
stage wait: its input edge fills, so file sources wait and live sources drop frames, counted as
``backpressure:<stage>``. A stream's ``ended`` event goes out once each of its results is settled
(sent or given up on), so the counts it carries are final.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from pipeline.bus import Bus
from pipeline.errors import ConfigError
from pipeline.media import AudioChunk, EndOfStream, Item, StreamInfo, StreamStatus, VideoFrame
from pipeline.results import (
    build_event,
    build_result,
    encode,
    event_id,
    events_subject,
    message_id,
    new_run_id,
    result_subject,
)
from pipeline.stage import Stage, StageContext, StageParams, register_stage
from pipeline.stats import StreamCounters


class PublishParams(StageParams):
    events: bool = True
    """Also publish stream lifecycle events on ``<subject>.events``."""


@dataclass
class _StreamRun:
    """One run of a stream (start to end): its id in message ids, its events' numbers, and its
    results the outbox has not settled yet.

    A stream a cluster runs keeps the run its catalog entry names under every owner. A file
    stream's results are then identified by position (track and pts: the same frame, the same
    id, whoever publishes it), so the results a new owner publishes again after resuming from the
    last checkpoint are duplicates JetStream drops. Everything else of a stream there (a live
    stream's results, events) is numbered per owner: its ids carry the lease's epoch."""

    run: str = field(default_factory=new_run_id)
    ids: str = ""
    """What message ids are made of besides the position: the run, and the epoch in a cluster."""
    by_position: bool = False
    events: Iterator[int] = field(default_factory=itertools.count)
    unsettled: int = 0
    ended: Callable[[], None] | None = None
    """Sends the ``ended`` event: waits here while results are unsettled."""

    @classmethod
    def of(cls, counters: StreamCounters, info: StreamInfo | None) -> _StreamRun:
        if counters.run is None:
            run = new_run_id()
            return cls(run=run, ids=run)
        epoch = counters.lease[1] if counters.lease is not None else 0
        return cls(run=counters.run, ids=f"{counters.run}.{epoch}", by_position=info is not None and info.seekable)

    def result_id(self, pipeline: str, item: Item) -> str:
        media = item.media
        if self.by_position and media.pts is not None:
            kind = "v" if isinstance(media, VideoFrame) else "a" if isinstance(media, AudioChunk) else media.kind[0]
            return message_id(pipeline, item.stream_id, self.run, f"{kind}{media.pts}")
        return message_id(pipeline, item.stream_id, self.ids, item.seq)

    def settled(self) -> None:
        self.unsettled -= 1
        if not self.unsettled and self.ended is not None:
            self.ended()


@register_stage("publish")
class Publish(Stage):
    Params = PublishParams
    params: PublishParams
    latency_key = None  # publish time is measured into the message itself
    sink = True

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        if ctx.bus is None:
            raise ConfigError(f"stage {self.name}", "publish needs a NATS connection (nats.url)")
        self.bus: Bus = ctx.bus
        self._runs: dict[str, _StreamRun] = {}

    def _run(self, stream_id: str) -> _StreamRun:
        run = self._runs.get(stream_id)
        if run is None:
            run = self._runs[stream_id] = _StreamRun.of(self.ctx.stats.stream(stream_id), None)
        return run

    async def on_stream_added(self, info: StreamInfo) -> None:
        counters = self.ctx.stats.stream(info.stream_id)
        counters.ended = False  # an id added again after it ended runs again (its counts go on)
        self._runs[info.stream_id] = _StreamRun.of(counters, info)
        self._event(info.stream_id, "started")

    async def on_stream_status(self, status: StreamStatus) -> None:
        self._event(status.stream_id, status.status, message=status.detail)

    async def process(self, item: Item) -> Sequence[Item]:
        # A full outbox is backpressure: wait here, the edge in front fills. Waiting before the
        # message is built keeps the wait inside its latency (the ``publish`` part).
        await self.bus.room()
        counters = self.ctx.stats.stream(item.stream_id)
        run = self._run(item.stream_id)
        message = build_result(self.ctx.pipeline, item, counters, self.ctx.latency_keys, run=run.run)
        # The callbacks outlive the item: they keep its few small facts, never the frame.
        latency, parts, stream_id = message["latency_ms"], tuple(item.timings_ms), item.stream_id
        media = item.media
        at = media.pts * media.time_base if media.pts is not None else None

        def sent() -> None:
            counters.published += 1
            if at is not None and (counters.published_to is None or at > counters.published_to):
                counters.published_to = at
            self.ctx.metrics.observe_published(stream_id, latency, parts)
            run.settled()

        def lost(why: str) -> None:
            # Core NATS's loss while the bus is down is its own reason; anything else is this
            # stage giving up on a result it had: an error.
            self.ctx.stats.count_drop(stream_id, why if why == "bus_down" else f"error:{self.name}:{why}")
            run.settled()

        run.unsettled += 1
        payload = encode(message)
        self.ctx.sinks.result(stream_id, message, payload, item.media)  # never waits: each has its own outbox
        self.bus.put(
            result_subject(self.bus.prefix, self.ctx.pipeline, stream_id),
            payload,
            msg_id=run.result_id(self.ctx.pipeline, item),
            on_sent=sent,
            on_lost=lost,
        )
        return ()

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        counters = self.ctx.stats.stream(eos.stream_id)
        counters.ended = True
        if eos.reason == "error":
            self._event(eos.stream_id, "error", message=eos.error or "unknown error")
        run = self._runs.pop(eos.stream_id, None) or _StreamRun.of(counters, None)

        def ended() -> None:
            self._event(eos.stream_id, "ended", reason=eos.reason, run=run)

        if run.unsettled:
            run.ended = ended
        else:
            ended()
        return ()

    def _event(
        self,
        stream_id: str,
        event: str,
        *,
        reason: str | None = None,
        message: str | None = None,
        run: _StreamRun | None = None,
    ) -> None:
        if not self.params.events:
            return
        run = run or self._run(stream_id)
        counters = self.ctx.stats.stream(stream_id) if event == "ended" else None
        body = build_event(
            self.ctx.pipeline, stream_id, event, reason=reason, message=message, counters=counters, run=run.run
        )
        payload = encode(body)
        self.ctx.sinks.event(stream_id, body, payload)
        self.bus.put(
            events_subject(self.bus.prefix, self.ctx.pipeline, stream_id),
            payload,
            msg_id=event_id(self.ctx.pipeline, stream_id, run.ids, next(run.events)),
        )
