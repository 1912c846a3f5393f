"""Bounded queues between stages.

An edge holds at most ``capacity`` data items. When full, ``block`` makes the producer wait (files:
lose nothing) and ``drop_oldest`` discards the oldest waiting item (live: keep latency bounded).
Every drop is counted against the item's stream. Control items (stream started/ended) are never
dropped and never wait, so a full edge cannot lose or stall a stream's end.

An edge ends two parts of an item's latency (``Item.mark``): ``blocked`` when it gets in (the
wait for room since its last part ended) and ``queue`` when it is taken out.

Compressed video is a chain: a packet decodes only with the packets before it back to a keyframe.
So once an edge drops a stream's video packet, it also drops that stream's video packets after it
up to its next keyframe (counted the same way): the decoder resumes on a clean picture instead of
decoding garbage and errors.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Literal

from .media import EncodedPacket, EndOfStream, Item, Message
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
        drop_reason: str | None = None,
    ) -> None:
        """``drop_reason``: what a drop here is counted as (default ``edge:<name>``)."""
        if capacity < 1:
            raise ValueError(f"edge {name}: capacity must be >= 1, got {capacity}")
        self.name = name
        self.capacity = capacity
        self.policy: OverflowPolicy = policy
        self.drop_reason = drop_reason or f"edge:{name}"
        self._stats = stats
        self._queue: deque[Message] = deque()
        self._data_count = 0
        self._producers = 0
        self._closed = False
        self._changed = asyncio.Event()
        self._awaiting_keyframe: set[str] = set()
        """Streams that lost a video packet here: their packets are dropped up to a keyframe."""
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
            if self._skip_to_keyframe(message):
                return
            while self._data_count >= self.capacity:
                if self.policy == "drop_oldest":
                    self._drop_oldest()
                else:
                    self._changed.clear()
                    await self._changed.wait()
            self._data_count += 1
            self.max_depth = max(self.max_depth, self._data_count)
            # Since its last part ended (its stage finished, its source read it) the item waited
            # for room here, or for a sibling branch's edge to take its copy (fan-out).
            message.mark("blocked")
        elif isinstance(message, EndOfStream):
            self._awaiting_keyframe.discard(message.stream_id)
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
            self._wake()
            if self._skip_to_keyframe(message):
                return await self.get()
            message.mark("queue")
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
                self._drop(waiting)
                return

    def _drop(self, item: Item) -> None:
        self._stats.drop_item(item, self.drop_reason)
        if _is_video_packet(item):
            self._awaiting_keyframe.add(item.stream_id)

    def _skip_to_keyframe(self, item: Item) -> bool:
        """Drop (and count) ``item`` if it is a video packet that cannot decode: its stream lost a
        packet here and this is not the keyframe that starts a new chain."""
        if item.stream_id not in self._awaiting_keyframe or not _is_video_packet(item):
            return False
        assert isinstance(item.media, EncodedPacket)
        if item.media.is_keyframe:
            self._awaiting_keyframe.discard(item.stream_id)
            return False
        self._stats.drop_item(item, f"edge:{self.name}")
        return True

    def _wake(self) -> None:
        # One event serves both sides: producers wait for room, the consumer for items. Waking
        # both is cheap (one consumer, few producers) and keeps the state machine obvious.
        self._changed.set()


def _is_video_packet(item: Item) -> bool:
    return isinstance(item.media, EncodedPacket) and item.media.kind == "video"
