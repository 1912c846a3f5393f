"""Running one source: whatever happens to it, every stream it started is ended exactly once; and
each item it hands on ends its first latency part, ``ingest``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from .media import EndOfStream, Item, Message, StreamStarted
from .stage import Source
from .stats import StreamStats

log = logging.getLogger("streamgraph.runner")

Emit = Callable[[Message], Awaitable[None]]


async def run_source(source: Source, emit: Emit, stats: StreamStats, label: str) -> None:
    """``source.run(emit)``; if it raises, its open streams end with the error and nothing else
    does: a broken source takes down its own streams, never the others."""
    open_streams: dict[str, None] = {}  # started and not yet ended, in start order

    async def tracking(message: Message) -> None:
        if isinstance(message, Item):
            # From its capture_time to now: reading it, a file at native rate that fell behind
            # its schedule, a live source's buffer.
            message.mark("ingest")
        elif isinstance(message, StreamStarted):
            open_streams[message.stream_id] = None
        elif isinstance(message, EndOfStream):
            open_streams.pop(message.stream_id, None)
        await emit(message)

    try:
        await source.run(tracking)
    except Exception as exc:
        log.error("source %s failed", label, exc_info=exc)
        error = f"source {label}: {type(exc).__name__}: {exc}"
        for stream_id in list(open_streams):
            counters = stats.stream(stream_id)
            counters.error = counters.error or error
            await tracking(EndOfStream(stream_id, "error", error))
