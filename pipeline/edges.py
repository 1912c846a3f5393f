"""Bounded queues between stages, fair across streams.

An edge holds at most ``capacity`` data items. When full, ``block`` makes the producer wait (files:
lose nothing) and ``drop_oldest`` discards a waiting item (live: keep latency bounded). Every drop
is counted against the item's stream. Control items (stream started, status, ended) are never
dropped and never wait, so a full edge cannot lose or stall a stream's start, status or end.

Fair across streams. The edge keeps one queue per stream: a stream's messages (its data items and
its control messages) come out in the order they went in, and ``get`` serves the streams that have
something waiting round-robin, one message per turn, so with N busy streams each gets 1/N of the
consumer's turns (and of its stage's time), whatever one of them floods in. Order *across*
streams is not kept: a message of stream A put before one of stream B may come out after it.
Nothing downstream relies on it: a stage run keeps one ordered lane per stream, the batcher and
the join keep their state per stream, and a stream's start, statuses and end travel in its own
queue, in order with its items. A stream's queue is removed when it empties, so the memory an edge
holds follows the streams that have something waiting, not every stream it has seen.

Who loses when full:

* ``drop_oldest`` drops the oldest data item of the stream with the most data items waiting
  (counting the item being put), ties to the stream whose oldest item came first: a stream that
  floods the edge only ever loses its own items, and a stream that keeps up loses none while
  another holds more than it. (Finding that stream looks at each stream with something waiting;
  a drop is the rare, slow path.)
* ``block`` has no fixed per-stream cap: a lone stream may fill the whole edge, and a cap that
  left room unused while a producer waited could deadlock a stage that needs more of one stream's
  items than its share (a join waiting for a branch, a batch filling up). Instead, room goes to
  the neediest waiting producer first: when several streams' producers wait, a free place goes to
  the one whose stream has the fewest items waiting here (ties: any of them). So a stream that
  filled the edge while it was alone gives its places up, one by one, as the round-robin consumer
  takes them, until the waiting streams hold equal shares; a place is never left free while any
  producer waits, so a single stream, or any mix, always makes progress.

An edge ends two parts of an item's latency (``Item.mark``): ``blocked`` when it gets in (the
wait for room since its last part ended) and ``queue`` when it is taken out.

Compressed video is a chain: a packet decodes only with the packets before it back to a keyframe.
So once an edge drops a stream's video packet, it also drops that stream's video packets after it
up to its next keyframe (counted the same way): the decoder resumes on a clean picture instead of
decoding garbage and errors.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from .media import EncodedPacket, EndOfStream, Item, Message
from .stats import StreamStats

OverflowPolicy = Literal["block", "drop_oldest"]


class EdgeClosed(Exception):
    """Raised by ``get`` once every producer is done and the edge is empty."""


@dataclass(slots=True)
class _Lane:
    """One stream's waiting messages, in order, each with its arrival number on this edge."""

    messages: deque[tuple[int, Message]] = field(default_factory=deque)
    data: int = 0
    """Data items among ``messages``."""


class Edge:
    """A many-producer, one-consumer bounded queue with an overflow policy, fair across streams."""

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
        self._lanes: dict[str, _Lane] = {}
        """Streams with something waiting (a lane is removed when it empties)."""
        self._turns: deque[str] = deque()
        """The streams in ``_lanes``, each once, in the order ``get`` serves them."""
        self._arrivals = itertools.count()
        self._data_count = 0
        self._waiting: dict[str, int] = {}
        """Producers waiting for room (``block``), per stream."""
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

    def stream_depth(self, stream_id: str) -> int:
        """Data items of ``stream_id`` waiting."""
        lane = self._lanes.get(stream_id)
        return lane.data if lane is not None else 0

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
        stream_id = message.stream_id
        if isinstance(message, Item):
            if self._skip_to_keyframe(message):
                return
            if self.policy == "drop_oldest":
                while self._data_count >= self.capacity:
                    self._drop_oldest(stream_id)
            else:
                await self._wait_for_room(stream_id)
            self._data_count += 1
            self.max_depth = max(self.max_depth, self._data_count)
            # Since its last part ended (its stage finished, its source read it) the item waited
            # for room here, or for a sibling branch's edge to take its copy (fan-out).
            message.mark("blocked")
        elif isinstance(message, EndOfStream):
            self._awaiting_keyframe.discard(stream_id)
        lane = self._lanes.get(stream_id)
        if lane is None:
            lane = self._lanes[stream_id] = _Lane()
            self._turns.append(stream_id)
        lane.messages.append((next(self._arrivals), message))
        if isinstance(message, Item):
            lane.data += 1
        self._wake()

    async def get(self) -> Message:
        while True:
            while not self._turns:
                if self._closed:
                    raise EdgeClosed(self.name)
                self._changed.clear()
                await self._changed.wait()
            stream_id = self._turns.popleft()
            lane = self._lanes[stream_id]
            _, message = lane.messages.popleft()
            if lane.messages:
                self._turns.append(stream_id)  # its next message waits for its next turn
            else:
                del self._lanes[stream_id]
            self._wake()
            if not isinstance(message, Item):
                return message
            lane.data -= 1
            self._data_count -= 1
            if not self._skip_to_keyframe(message):
                message.mark("queue")
                return message

    def discard_all(self, where: str) -> int:
        """Empty the edge, counting each waiting data item as dropped ``where`` (shutdown)."""
        discarded = 0
        for lane in self._lanes.values():
            for _, message in lane.messages:
                if isinstance(message, Item):
                    self._stats.drop_item(message, where)
                    discarded += 1
        self._lanes.clear()
        self._turns.clear()
        self._data_count = 0
        self._wake()
        return discarded

    async def _wait_for_room(self, stream_id: str) -> None:
        if self._has_room(stream_id):
            return
        self._waiting[stream_id] = self._waiting.get(stream_id, 0) + 1
        try:
            while not self._has_room(stream_id):
                self._changed.clear()
                await self._changed.wait()
        finally:
            left = self._waiting[stream_id] - 1
            if left:
                self._waiting[stream_id] = left
            else:
                del self._waiting[stream_id]
            self._wake()  # one fewer in line (or one cancelled): the next may go

    def _has_room(self, stream_id: str) -> bool:
        """A free place that is ``stream_id``'s to take: no other stream's producer waits for room
        with fewer of its items here."""
        if self._data_count >= self.capacity:
            return False
        mine = self.stream_depth(stream_id)
        return all(self.stream_depth(other) >= mine for other in self._waiting if other != stream_id)

    def _drop_oldest(self, putting: str) -> None:
        """Drop the oldest data item of the stream with the most data items here, counting the
        one ``putting`` is about to add (ties: the stream whose oldest item came first)."""
        victim: tuple[int, int, str, int] | None = None  # (-count, arrival, stream, index)
        for stream_id, lane in self._lanes.items():
            if not lane.data:
                continue
            index, arrival = next((i, n) for i, (n, m) in enumerate(lane.messages) if isinstance(m, Item))
            candidate = (-(lane.data + (stream_id == putting)), arrival, stream_id, index)
            if victim is None or candidate < victim:
                victim = candidate
        assert victim is not None, "a full edge holds data items"
        _, _, stream_id, index = victim
        lane = self._lanes[stream_id]
        _, item = lane.messages[index]
        del lane.messages[index]
        assert isinstance(item, Item)
        lane.data -= 1
        self._data_count -= 1
        if not lane.messages:
            del self._lanes[stream_id]
            self._turns.remove(stream_id)
        self._drop(item)

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
