"""A sink: one place results and events go besides NATS (a file, an MQTT broker, a webhook), with
an outbox of its own.

``offer`` never waits: the message joins the sink's bounded outbox, and when the outbox is full
the oldest waiting message is dropped and counted (``full``). One task per sink takes messages
off in batches and hands them to ``deliver``; a ``SinkDown`` (the broker gone, a 5xx) is tried
again with backoff while new messages keep queueing (and the oldest keep dropping), a
``SinkRejected`` (a 4xx) drops that batch (``rejected``). So a slow or dead sink costs the
pipeline nothing but its counted drops, and never holds up NATS or another sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger("streamgraph.sinks")

BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 5.0


@dataclass(frozen=True, slots=True)
class SinkMessage:
    """A result or an event, as published on NATS: the dict and its JSON bytes (encoded once)."""

    kind: Literal["result", "event"]
    stream_id: str
    body: dict[str, Any]
    payload: bytes
    frame: Any = None
    """The result's media (a ``VideoFrame``), only for a sink that ``wants_frames``."""


class SinkDown(Exception):
    """The destination cannot take the batch now (unreachable, a 5xx): try it again later."""


class SinkRejected(Exception):
    """The destination refused the batch for good (a 4xx): drop it."""


class Sink(ABC):
    """One destination. Subclasses say how to ``connect`` and how to ``deliver`` a batch; the
    outbox, the retries and the counts are here."""

    kind = "sink"

    def __init__(self, name: str, *, max_pending: int, max_batch: int = 64, batch_delay_s: float = 0.0) -> None:
        self.name = name
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.batch_delay_s = batch_delay_s
        self.results = True
        self.events = True
        self.wants_frames = False
        """Whether its results carry their frame (the Python API's): frames held in an outbox
        cost memory, so only a sink that asks gets them."""
        """Which messages ``Sinks`` offers it (the config's ``results`` and ``events``)."""
        self.sent = 0
        self.dropped: Counter[str] = Counter()
        self._queue: deque[SinkMessage] = deque()
        self._batch: list[SinkMessage] = []
        """Taken off the queue and being delivered (or waiting to be tried again)."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.down_since: float | None = None
        """Loop time the sink went down, None while it delivers."""

    @property
    def pending(self) -> int:
        return len(self._queue) + len(self._batch)

    @property
    def where(self) -> str:
        """Where it sends, for logs (a path, a broker, a URL)."""
        return self.kind

    def offer(self, message: SinkMessage) -> None:
        """Queue a message; never waits. A full outbox drops its oldest message."""
        if self._closing:
            self.dropped["closed"] += 1
            return
        if len(self._queue) >= self.max_pending:
            self._queue.popleft()
            self.dropped["full"] += 1
        self._queue.append(message)
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"sink {self.name}")

    async def close(self, timeout_s: float) -> None:
        """Deliver what waits, for up to ``timeout_s``; what is left then is dropped (``unsent``)."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            elif self._task.exception() is not None:
                log.error("sink %s failed", self.name, exc_info=self._task.exception())
        left = len(self._queue) + len(self._batch)
        if left:
            log.warning("sink %s: %d message(s) not delivered by the end", self.name, left)
            self.dropped["unsent"] += left
            self._queue.clear()
            self._batch = []
        with contextlib.suppress(Exception):
            await self.disconnect()

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST_S
        while True:
            if not self._batch:
                if not self._queue:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await self._fill_wait()
                self._batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            try:
                await self.deliver(self._batch)
            except SinkDown as exc:
                # Closing too: ``close`` gives it the flush timeout, then counts what is left.
                self._went_down(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            except SinkRejected as exc:
                log.warning("sink %s: %d message(s) rejected: %s", self.name, len(self._batch), exc)
                self.dropped["rejected"] += len(self._batch)
            else:
                self.sent += len(self._batch)
                if self.down_since is not None:
                    log.info("sink %s: delivering again", self.name)
                    self.down_since = None
            backoff = BACKOFF_FIRST_S
            self._batch = []

    async def _fill_wait(self) -> None:
        """Wait up to ``batch_delay_s`` for a full batch (a webhook's batching by time)."""
        if self.batch_delay_s <= 0 or len(self._queue) >= self.max_batch or self._closing:
            return
        deadline = asyncio.get_running_loop().time() + self.batch_delay_s
        while len(self._queue) < self.max_batch and not self._closing:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=left)

    def _went_down(self, exc: SinkDown) -> None:
        if self.down_since is None:
            self.down_since = asyncio.get_running_loop().time()
            log.warning("sink %s is down (%s); retrying, %d message(s) waiting", self.name, exc, self.pending)

    async def connect(self) -> None:  # noqa: B027  (optional: a sink with nothing to set up)
        """Set up what ``deliver`` needs, at start; an unreachable destination is not an error
        here (the messages wait, and ``deliver`` tries again), a bad configuration is."""

    async def disconnect(self) -> None:  # noqa: B027
        """Release what ``connect`` set up."""

    @abstractmethod
    async def deliver(self, batch: list[SinkMessage]) -> None:
        """Send the batch, in order; ``SinkDown`` to have it tried again, ``SinkRejected`` to drop it."""
