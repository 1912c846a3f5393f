"""Bounded queues between stages.

An edge holds at most ``capacity`` data items. When full, ``block`` makes the producer wait (files:
lose nothing) and ``drop_oldest`` discards the oldest waiting item (live: keep latency bounded).
Every drop is counted against the item's stream. Control items (stream started/ended) are never
dropped and never wait, so a full edge cannot lose or stall a stream's end.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Literal

from .media import Item, Message
from .stats import StreamStats

OverflowPolicy = Literal["block", "drop_oldest"]


class EdgeClosed(Exception):
    """Raised by ``get`` once every producer is done and the edge is empty."""


class Edge:
    """A many-producer, one-consumer bounded queue with an overflow policy."""

    def __init__(
        self,
        name: str,
        *,
        capacity: int,
        policy: OverflowPolicy,
        stats: StreamStats,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"edge {name}: capacity must be >= 1, got {capacity}")
        self.name = name
        self.capacity = capacity
        self.policy: OverflowPolicy = policy
        self._stats = stats
        self._queue: deque[Message] = deque()
        self._data_count = 0
        self._producers = 0
        self._closed = False
        self._changed = asyncio.Event()
        self.max_depth = 0

    @property
    def depth(self) -> int:
        """Data items waiting (control items not counted)."""
        return self._data_count

    @property
    def closed(self) -> bool:
        return self._closed

    def add_producer(self) -> None:
        self._producers += 1

    def producer_done(self) -> None:
        self._producers -= 1
        if self._producers <= 0:
            self._closed = True
            self._wake()

    async def put(self, message: Message) -> None:
        if self._closed:
            raise EdgeClosed(self.name)
        if isinstance(message, Item):
            while self._data_count >= self.capacity:
                if self.policy == "drop_oldest":
                    self._drop_oldest()
                else:
                    self._changed.clear()
                    await self._changed.wait()
            self._data_count += 1
            self.max_depth = max(self.max_depth, self._data_count)
            message.enqueued_at = time.monotonic()
        self._queue.append(message)
        self._wake()

    async def get(self) -> Message:
        while not self._queue:
            if self._closed:
                raise EdgeClosed(self.name)
            self._changed.clear()
            await self._changed.wait()
        message = self._queue.popleft()
        if isinstance(message, Item):
            self._data_count -= 1
            message.add_time("queue", (time.monotonic() - message.enqueued_at) * 1000.0)
        self._wake()
        return message

    def discard_all(self, where: str) -> int:
        """Empty the edge, counting each waiting data item as dropped ``where`` (shutdown)."""
        discarded = 0
        while self._queue:
            message = self._queue.popleft()
            if isinstance(message, Item):
                self._stats.drop_item(message, where)
                discarded += 1
        self._data_count = 0
        self._wake()
        return discarded

    def _drop_oldest(self) -> None:
        for index, waiting in enumerate(self._queue):
            if isinstance(waiting, Item):
                del self._queue[index]
                self._data_count -= 1
                self._stats.drop_item(waiting, f"edge:{self.name}")
                return

    def _wake(self) -> None:
        # One event serves both sides: producers wait for room, the consumer for items. Waking
        # both is cheap (one consumer, few producers) and keeps the state machine obvious.
        self._changed.set()
