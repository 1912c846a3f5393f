"""pipeline.edges: bounded queues with block / drop_oldest, control items, closing, drop counting,
and fairness across streams (round-robin service, a flooder drops only its own items, room goes to
the waiting stream with the fewest items)."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import pytest

from pipeline.edges import Edge, EdgeClosed
from pipeline.media import EncodedPacket, EndOfStream, Item, Message, StreamInfo, StreamStarted, StreamStatus
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


async def take_ready(edge: Edge) -> list[Message]:
    """Every message ``get`` hands out now (it may skip the rest of a broken chain on the way)."""
    got: list[Message] = []
    while edge.depth:
        getter = asyncio.create_task(edge.get())
        await settle()
        if not getter.done():  # what was left could not decode: dropped when taken
            getter.cancel()
            break
        got.append(getter.result())
    return got


async def drain(edge: Edge) -> list[tuple[str, int]]:
    got = []
    for message in await take_ready(edge):
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
    assert await drain(edge) == [("s", 5), ("other", 1), ("s", 6)]  # round-robin
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


# --- fairness across streams ----------------------------------------------------------------------


def status(stream: str, name: str = "stalled") -> StreamStatus:
    return StreamStatus(stream, name)  # type: ignore[arg-type]


def label(message: Message) -> str:
    if isinstance(message, Item):
        return f"{message.stream_id}{message.seq}"
    return f"{message.stream_id}:{type(message).__name__}"


async def test_get_serves_streams_round_robin_one_message_per_turn():
    edge = make_edge(capacity=16)
    for seq in range(4):
        await edge.put(item(seq, "flood"))
    await edge.put(item(0, "calm"))
    await edge.put(item(1, "calm"))
    got = [label(await edge.get()) for _ in range(6)]
    assert got == ["flood0", "calm0", "flood1", "calm1", "flood2", "flood3"]
    assert edge.depth == 0


async def test_a_stream_that_arrives_later_gets_the_next_turns_not_the_end_of_the_backlog():
    edge = make_edge(capacity=16)
    for seq in range(6):
        await edge.put(item(seq, "flood"))
    assert label(await edge.get()) == "flood0"
    await edge.put(item(0, "calm"))  # behind five of the flooder's items in arrival order
    assert [label(await edge.get()) for _ in range(3)] == ["flood1", "calm0", "flood2"]


async def test_with_three_busy_streams_each_gets_a_third_of_the_turns():
    edge = make_edge(capacity=64)
    for seq in range(20):
        await edge.put(item(seq, "a"))
    for seq in range(10):
        await edge.put(item(seq, "b"))
        await edge.put(item(seq, "c"))
    first = [(await edge.get()).stream_id for _ in range(30)]
    assert first.count("a") == first.count("b") == first.count("c") == 10
    assert edge.stream_depth("a") == 10 and edge.stream_depth("b") == 0


async def test_each_streams_control_messages_keep_their_place_among_its_items():
    edge = make_edge(capacity=16)
    sent = [
        started("a"),
        status("b", "connecting"),
        item(0, "a"),
        started("b"),
        item(1, "a"),
        item(0, "b"),
        status("a"),
        item(2, "a"),
        EndOfStream("b"),
        item(3, "a"),
        EndOfStream("a"),
        started("b"),  # the same id again, after its end
        item(0, "b"),
    ]
    for message in sent:
        await edge.put(message)
    got = [label(await edge.get()) for _ in sent]
    for stream in ("a", "b"):
        assert [x for x in got if x.startswith(stream)] == [label(m) for m in sent if m.stream_id == stream]
    assert got[:4] == ["a:StreamStarted", "b:StreamStatus", "a0", "b:StreamStarted"]  # turns alternate
    assert edge.depth == 0


async def test_an_empty_streams_queue_is_removed():
    edge = make_edge(capacity=16)
    for stream in ("a", "b", "c"):
        await edge.put(started(stream))
        await edge.put(item(0, stream))
    for _ in range(6):
        await edge.get()
    assert edge._lanes == {} and not edge._turns  # memory follows the streams with something waiting
    await edge.put(item(1, "b"))
    assert label(await edge.get()) == "b1"


async def test_drop_oldest_under_a_flooder_drops_only_the_flooders_items():
    stats = StreamStats()
    edge = make_edge(capacity=4, policy="drop_oldest", stats=stats)
    await edge.put(started("calm"))
    await edge.put(item(0, "calm"))  # the oldest item here from now on
    await edge.put(started("flood"))
    for seq in range(50):
        await edge.put(item(seq, "flood"))
    await edge.put(item(1, "calm"))
    for seq in range(50, 60):
        await edge.put(item(seq, "flood"))
    assert edge.depth == 4
    assert stats.stream("calm").drops == {}
    assert stats.stream("flood").drops == {"edge:next": 58}
    got = [label(m) for m in await take_ready(edge)]
    assert got == ["calm:StreamStarted", "flood:StreamStarted", "calm0", "flood58", "calm1", "flood59"]


async def test_drop_oldest_counts_the_item_being_put_so_a_tie_costs_the_putter():
    stats = StreamStats()
    edge = make_edge(capacity=2, policy="drop_oldest", stats=stats)
    await edge.put(item(0, "calm"))
    await edge.put(item(0, "flood"))
    await edge.put(item(1, "flood"))  # one each waits, calm's is older; flood would hold two
    assert stats.stream("calm").drops == {}
    assert stats.stream("flood").drops == {"edge:next": 1}
    assert [label(m) for m in await take_ready(edge)] == ["calm0", "flood1"]


async def test_drop_oldest_takes_from_the_stream_holding_most_even_when_another_puts():
    stats = StreamStats()
    edge = make_edge(capacity=3, policy="drop_oldest", stats=stats)
    for seq in range(3):
        await edge.put(item(seq, "burst"))
    await edge.put(item(0, "calm"))  # full: burst holds all three, so it gives one up
    assert stats.stream("burst").drops == {"edge:next": 1}
    assert stats.stream("calm").drops == {}
    # Ties between streams other than the putter's: the one whose oldest item came first.
    await edge.put(item(0, "third"))  # burst 2, calm 1, third 0+1: burst again
    await edge.put(item(1, "third"))  # burst 1, calm 1, third 1+1: third's own
    assert stats.stream("burst").drops == {"edge:next": 2}
    assert stats.stream("third").drops == {"edge:next": 1}
    assert sorted(label(m) for m in await take_ready(edge)) == ["burst2", "calm0", "third1"]


async def test_a_flooders_broken_chain_is_skipped_while_the_calm_streams_chain_stays_whole():
    stats = StreamStats()
    edge = make_edge(capacity=4, policy="drop_oldest", stats=stats)
    await edge.put(packet(0, key=True, stream="calm"))
    for pts in range(8):  # keyframes every 4: 0 and 4
        await edge.put(packet(pts, key=pts % 4 == 0, stream="flood"))
    await edge.put(packet(1, key=False, stream="calm"))
    await edge.put(packet(8, key=True, stream="flood"))
    await edge.put(packet(9, key=False, stream="flood"))
    got = await drain(edge)
    assert [pts for stream, pts in got if stream == "calm"] == [0, 1]
    flood = [pts for stream, pts in got if stream == "flood"]
    # What it keeps decodes: it resumes on a keyframe, and each packet after it follows its
    # predecessor (here only keyframes survive the flood: 5-7 and 9 went with the chain).
    assert flood == [4, 8]
    assert all(pts % 4 == 0 or pts - 1 in flood for pts in flood)
    assert stats.stream("calm").packets_dropped == 0
    assert stats.stream("flood").packets_dropped == 10 - len(flood)


async def test_block_gives_a_free_place_to_the_waiting_stream_with_fewest_items():
    edge = Edge("next", capacity=4, policy="block", stats=StreamStats())
    edge.add_producer()
    for seq in range(4):
        await edge.put(item(seq, "flood"))  # alone, it may fill the edge
    flood_next = asyncio.create_task(edge.put(item(4, "flood")))
    await settle()
    calm = [asyncio.create_task(edge.put(item(seq, "calm"))) for seq in range(2)]
    await settle()
    assert not flood_next.done() and not any(t.done() for t in calm)
    assert label(await edge.get()) == "flood0"
    await settle()
    assert calm[0].done() and not flood_next.done()  # the place went to calm (0 here), not flood (3)
    assert label(await edge.get()) == "flood1"  # round-robin: flood's turn, then calm's
    await settle()
    assert calm[1].done() and not flood_next.done()  # calm 1 < flood 2
    assert label(await edge.get()) == "calm0"
    await settle()
    assert flood_next.done()  # now flood (2) holds no more than calm (1)
    rest = [label(await edge.get()) for _ in range(4)]
    assert rest == ["flood2", "calm1", "flood3", "flood4"]


async def test_a_cancelled_waiting_producer_does_not_hold_up_the_others():
    edge = make_edge(capacity=2)
    await edge.put(item(0, "flood"))
    await edge.put(item(1, "flood"))
    flood_next = asyncio.create_task(edge.put(item(2, "flood")))
    calm = asyncio.create_task(edge.put(item(0, "calm")))
    await settle()
    await edge.get()  # a place for calm: flood's producer steps back
    calm.cancel()  # ... and calm's goes away before it takes it
    await settle()
    assert calm.cancelled()
    assert flood_next.done()
    assert [label(await edge.get()) for _ in range(2)] == ["flood1", "flood2"]


async def test_block_many_producers_of_many_streams_lose_nothing_and_keep_each_streams_order():
    edge = Edge("next", capacity=3, policy="block", stats=StreamStats())
    streams = {"a": 30, "b": 5, "c": 12}

    async def produce(stream: str, count: int) -> None:
        await edge.put(started(stream))
        for seq in range(count):
            await edge.put(item(seq, stream))
        await edge.put(EndOfStream(stream))
        edge.producer_done()

    for _ in streams:
        edge.add_producer()
    producers = [asyncio.create_task(produce(s, n)) for s, n in streams.items()]
    got: dict[str, list[str]] = {}
    while True:
        try:
            message = await edge.get()
        except EdgeClosed:
            break
        got.setdefault(message.stream_id, []).append(label(message))
        assert edge.depth <= edge.capacity
    await asyncio.gather(*producers)
    for stream, count in streams.items():
        assert got[stream] == [
            f"{stream}:StreamStarted",
            *(f"{stream}{n}" for n in range(count)),
            f"{stream}:EndOfStream",
        ]
