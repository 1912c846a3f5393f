"""pipeline.edges: bounded queues with block / drop_oldest, control items, closing, drop counting."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import pytest

from pipeline.edges import Edge, EdgeClosed
from pipeline.media import EncodedPacket, EndOfStream, Item, StreamInfo, StreamStarted
from pipeline.stats import StreamStats


def item(seq: int, stream: str = "s") -> Item:
    return Item(stream_id=stream, media=EncodedPacket(None, seq, Fraction(1, 30), True), capture_time=0.0, seq=seq)


def started(stream: str = "s") -> StreamStarted:
    return StreamStarted(StreamInfo(stream_id=stream, uri="test://", live=False))


async def settle(rounds: int = 5) -> None:
    """Let other tasks run until they block (no wall-clock time involved)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def make_edge(capacity: int = 2, policy="block", stats: StreamStats | None = None) -> Edge:
    edge = Edge("next", capacity=capacity, policy=policy, stats=stats or StreamStats())
    edge.add_producer()
    return edge


def test_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        Edge("e", capacity=0, policy="block", stats=StreamStats())


async def test_fifo_order_and_depth():
    edge = make_edge(capacity=4)
    for seq in range(3):
        await edge.put(item(seq))
    assert edge.depth == 3
    assert [(await edge.get()).seq for _ in range(3)] == [0, 1, 2]
    assert edge.depth == 0
    assert edge.max_depth == 3


async def test_block_waits_for_room_and_loses_nothing():
    stats = StreamStats()
    edge = make_edge(capacity=2, stats=stats)

    async def produce() -> None:
        for seq in range(10):
            await edge.put(item(seq))
        edge.producer_done()

    producer = asyncio.create_task(produce())
    await settle()
    # Full: the producer is parked on the third put, nothing was dropped to make room.
    assert not producer.done()
    assert edge.depth == 2

    received = []
    while True:
        try:
            received.append((await edge.get()).seq)
        except EdgeClosed:
            break
    await producer
    assert received == list(range(10))
    assert edge.max_depth == 2
    assert stats.dropped == 0
    assert stats.stream("s").packets_dropped == 0


async def test_drop_oldest_drops_the_oldest_data_item_and_counts_it():
    stats = StreamStats()
    edge = make_edge(capacity=2, policy="drop_oldest", stats=stats)
    for seq in range(5):
        await edge.put(item(seq))  # never waits
    assert edge.depth == 2
    assert [(await edge.get()).seq for _ in range(2)] == [3, 4]
    assert stats.stream("s").drops == {"edge:next": 3}
    assert stats.dropped == 3


async def test_drop_oldest_counts_per_stream():
    stats = StreamStats()
    edge = make_edge(capacity=1, policy="drop_oldest", stats=stats)
    await edge.put(item(0, "a"))
    await edge.put(item(0, "b"))  # drops a's item
    await edge.put(item(1, "b"))  # drops b's first
    assert stats.stream("a").drops == {"edge:next": 1}
    assert stats.stream("b").drops == {"edge:next": 1}
    got = await edge.get()
    assert (got.stream_id, got.seq) == ("b", 1)


async def test_drop_oldest_counts_packets_apart():
    stats = StreamStats()
    edge = make_edge(capacity=1, policy="drop_oldest", stats=stats)
    packet = item(0)
    packet.seq = -1
    await edge.put(packet)
    await edge.put(item(1))
    assert stats.stream("s").packets_dropped == 1
    assert stats.stream("s").drops == {}


async def test_drop_oldest_never_drops_control_items():
    stats = StreamStats()
    edge = make_edge(capacity=2, policy="drop_oldest", stats=stats)
    await edge.put(started())
    await edge.put(item(0))
    await edge.put(item(1))
    await edge.put(item(2))  # the oldest *data* item (0) goes, StreamStarted stays
    await edge.put(EndOfStream("s"))
    await edge.put(item(3))  # drops 1, not the EndOfStream
    got = [await edge.get() for _ in range(4)]
    assert isinstance(got[0], StreamStarted)
    assert isinstance(got[1], Item) and got[1].seq == 2
    assert isinstance(got[2], EndOfStream)
    assert isinstance(got[3], Item) and got[3].seq == 3
    assert stats.stream("s").drops == {"edge:next": 2}


async def test_control_items_never_wait_on_a_full_blocking_edge():
    edge = make_edge(capacity=1, policy="block")
    await edge.put(item(0))
    assert edge.depth == 1
    for control in (started(), EndOfStream("s", "stopped")):
        task = asyncio.create_task(edge.put(control))
        await asyncio.sleep(0)
        assert task.done(), f"{control} waited on a full edge"
        await task
    assert edge.depth == 1  # control items do not count against capacity
    assert isinstance(await edge.get(), Item)
    assert isinstance(await edge.get(), StreamStarted)
    eos = await edge.get()
    assert isinstance(eos, EndOfStream) and eos.reason == "stopped"


async def test_get_raises_edge_closed_once_every_producer_is_done_and_empty():
    edge = Edge("next", capacity=4, policy="block", stats=StreamStats())
    edge.add_producer()
    edge.add_producer()
    await edge.put(item(0))
    edge.producer_done()
    assert not edge.closed
    edge.producer_done()
    assert edge.closed
    # Still delivers what is waiting, then reports closed.
    assert (await edge.get()).seq == 0
    with pytest.raises(EdgeClosed):
        await edge.get()


async def test_waiting_consumer_is_woken_by_close():
    edge = make_edge()
    getter = asyncio.create_task(edge.get())
    await settle()
    assert not getter.done()
    edge.producer_done()
    with pytest.raises(EdgeClosed):
        await getter


async def test_waiting_consumer_is_woken_by_put():
    edge = make_edge()
    getter = asyncio.create_task(edge.get())
    await settle()
    assert not getter.done()
    await edge.put(item(7))
    assert (await getter).seq == 7


async def test_put_on_closed_edge_raises():
    edge = make_edge()
    edge.producer_done()
    with pytest.raises(EdgeClosed):
        await edge.put(item(0))


async def test_queue_time_is_added_to_item_timings():
    edge = make_edge()
    first = item(0)
    first.timings_ms["queue"] = 5.0  # time from an earlier edge
    await edge.put(first)
    got = await edge.get()
    assert got is first
    assert "queue" in got.timings_ms
    assert got.timings_ms["queue"] >= 5.0  # added to, not replaced

    second = item(1)
    await edge.put(second)
    assert (await edge.get()).timings_ms["queue"] >= 0.0


async def test_an_edge_ends_blocked_when_the_item_gets_in_and_queue_when_it_is_taken_out():
    edge = make_edge(capacity=1)
    ahead, waiting = item(0), item(1)
    ahead.capture_time = waiting.capture_time = time.time()
    await edge.put(ahead)
    producer = asyncio.create_task(edge.put(waiting))
    await asyncio.sleep(0.01)  # the edge is full: ``waiting`` waits to get in
    assert await edge.get() is ahead
    await producer
    await asyncio.sleep(0.01)  # now it waits in the edge
    before = time.time()
    got = await edge.get()
    after = time.time()
    assert got is waiting
    assert set(waiting.timings_ms) == {"blocked", "queue"}
    assert waiting.timings_ms["blocked"] >= 5.0 and waiting.timings_ms["queue"] >= 5.0
    # The two parts tile its time: together they are its age when it was taken out.
    accounted_s = sum(waiting.timings_ms.values()) / 1000.0
    assert before - waiting.capture_time - 1e-6 <= accounted_s <= after - waiting.capture_time + 1e-6


async def test_discard_all_counts_frames_as_drops_and_packets_apart():
    stats = StreamStats()
    edge = make_edge(capacity=8, stats=stats)
    await edge.put(started())
    await edge.put(item(0))
    await edge.put(item(1, "other"))
    packet = item(0)
    packet.seq = -1
    await edge.put(packet)
    await edge.put(EndOfStream("s"))
    assert edge.discard_all("shutdown") == 3
    assert edge.depth == 0
    assert stats.stream("s").drops == {"shutdown": 1}
    assert stats.stream("other").drops == {"shutdown": 1}
    assert stats.stream("s").packets_dropped == 1
    assert stats.drops_by_reason() == {"shutdown": 2}


async def test_discard_all_makes_room_for_a_blocked_producer():
    edge = make_edge(capacity=1)
    await edge.put(item(0))
    producer = asyncio.create_task(edge.put(item(1)))
    await settle()
    assert not producer.done()
    edge.discard_all("shutdown")
    await producer
    assert (await edge.get()).seq == 1


def packet(pts: int, *, key: bool, stream: str = "s", kind: str = "video") -> Item:
    media = EncodedPacket(None, pts, Fraction(1, 30), key, kind)  # type: ignore[arg-type]
    return Item(stream_id=stream, media=media, capture_time=0.0)


async def drain(edge: Edge) -> list[tuple[str, int]]:
    got = []
    while edge.depth:
        message = await edge.get()
        assert isinstance(message, Item)
        got.append((message.stream_id, message.media.pts))
    return got


async def test_after_dropping_a_video_packet_the_stream_skips_to_its_next_keyframe():
    stats = StreamStats()
    edge = make_edge(capacity=3, policy="drop_oldest", stats=stats)
    for pts, key in [(0, True), (1, False), (2, False), (3, False)]:  # 3 pushes 0 (the keyframe) out
        await edge.put(packet(pts, key=key))
    await edge.put(packet(4, key=False))  # its chain is broken too: dropped on arrival
    await edge.put(packet(0, key=False, stream="other"))  # pushes 1 out; 'other' itself is intact
    assert await drain(edge) == [("other", 0)]  # 2 and 3 could not decode: dropped when taken
    await edge.put(packet(5, key=True))
    await edge.put(packet(6, key=False))
    await edge.put(packet(1, key=False, stream="other"))
    assert await drain(edge) == [("s", 5), ("s", 6), ("other", 1)]
    assert stats.stream("s").packets_dropped == 5  # 0, 1 (pushed out), 4 (on arrival), 2, 3 (taken)
    assert stats.stream("other").packets_dropped == 0


async def test_audio_packets_are_dropped_alone():
    stats = StreamStats()
    edge = make_edge(capacity=1, policy="drop_oldest", stats=stats)
    await edge.put(packet(0, key=True, kind="audio"))
    await edge.put(packet(1, key=False, kind="audio"))  # pushes 0 out; 1 still decodes
    await edge.put(packet(2, key=False, kind="audio"))
    assert await drain(edge) == [("s", 2)]
    assert stats.stream("s").packets_dropped == 2
