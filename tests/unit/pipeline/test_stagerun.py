"""pipeline.stagerun: the time an item spends between edges and stages shows in its timings,
and its parts tile that time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from fractions import Fraction
from types import SimpleNamespace

from pipeline.edges import Edge
from pipeline.media import EndOfStream, Item, StreamInfo, StreamStarted, VideoFrame
from pipeline.stage import Stage
from pipeline.stagerun import StageRun, fan_out
from pipeline.stats import StreamStats


def item(seq: int) -> Item:
    frame = VideoFrame(None, seq, Fraction(1, 25), 1, 1)
    return Item(stream_id="s", media=frame, capture_time=time.time(), seq=seq)


class HoldFirst(Stage):
    """Holds item 0 until ``release`` is set; every other item goes through at once."""

    latency_key = "post"

    def __init__(self, in_flight: int) -> None:
        super().__init__("hold", None)
        self.in_flight = in_flight
        self.release = asyncio.Event()
        self.passed: list[int] = []

    @property
    def max_in_flight(self) -> int:
        return self.in_flight

    async def process(self, message: Item) -> Sequence[Item]:
        if message.seq == 0:
            await self.release.wait()
        self.passed.append(message.seq)
        return (message,)


async def run_two(in_flight: int) -> tuple[Item, Item]:
    stats = StreamStats()
    inbox = Edge("in", capacity=8, policy="block", stats=stats)
    outbox = Edge("out", capacity=8, policy="block", stats=stats)
    inbox.add_producer()
    outbox.add_producer()
    stage = HoldFirst(in_flight)
    node = SimpleNamespace(name="hold", stage=stage)
    run = StageRun(node, inbox, [outbox], stats=stats, inputs_carrying=lambda _: 1, stop_stream=lambda *_: None)  # type: ignore[arg-type]
    task = asyncio.create_task(run.run())
    first, second = item(0), item(1)
    await inbox.put(first)
    await inbox.put(second)
    for _ in range(1000):  # until item 1 is done (in_flight 2) or waits for the slot (1): a hang guard
        await asyncio.sleep(0)
    assert stage.passed == ([1] if in_flight == 2 else [])
    await asyncio.sleep(0.01)  # item 1 now waits for item 0 (its turn, or a slot) for 10 ms
    stage.release.set()
    inbox.producer_done()
    await asyncio.wait_for(task, 10)
    return first, second


async def test_a_result_held_back_for_its_streams_order_counts_that_wait_as_ordering():
    first, second = await run_two(in_flight=2)
    assert second.timings_ms["ordering"] > first.timings_ms["ordering"]
    assert second.timings_ms["ordering"] >= 5.0  # it waited the 10 ms sleep, minus nothing


async def test_waiting_for_a_free_in_flight_slot_counts_as_blocked():
    first, second = await run_two(in_flight=1)
    assert second.timings_ms["blocked"] > first.timings_ms["blocked"]
    assert second.timings_ms["blocked"] >= 5.0


async def test_waiting_to_get_into_a_full_block_edge_counts_as_blocked():
    stats = StreamStats()
    edge = Edge("e", capacity=1, policy="block", stats=stats)
    edge.add_producer()
    roomy, waiting = item(0), item(1)
    await fan_out(roomy, [edge], via="up")
    put = asyncio.create_task(fan_out(waiting, [edge], via="up"))
    await asyncio.sleep(0.01)
    assert not put.done()  # the edge is full: it waits
    assert await edge.get() is roomy
    await put
    assert waiting.timings_ms["blocked"] > roomy.timings_ms["blocked"]
    assert waiting.timings_ms["blocked"] >= 5.0


def assert_tiled(item: Item, before: float, after: float) -> None:
    """The item's parts add up to its age at some moment between ``before`` and ``after``."""
    accounted_s = sum(item.timings_ms.values()) / 1000.0
    assert before - item.capture_time - 1e-6 <= accounted_s <= after - item.capture_time + 1e-6, item.timings_ms


async def test_the_parts_of_items_through_a_stage_tile_their_time():
    first, second = await run_two(in_flight=2)
    for done in (first, second):
        assert set(done.timings_ms) == {"blocked", "queue", "post", "ordering"}
        # Taken out of the last edge by nobody yet: their parts end where they got into it.
        assert_tiled(done, done.capture_time, time.time())
    assert first.timings_ms["post"] >= 5.0  # held in the stage (its process) until released


class HoldToTheEnd(Stage):
    """Keeps every item and hands them back when their stream ends (as a decoder's last frames)."""

    latency_key = "post"

    def __init__(self) -> None:
        super().__init__("keep", None)
        self.kept: list[Item] = []

    async def process(self, message: Item) -> Sequence[Item]:
        self.kept.append(message)
        return ()

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        return self.kept


async def test_what_a_stage_hands_back_at_a_streams_end_carries_its_wait_in_the_stages_part():
    stats = StreamStats()
    inbox = Edge("in", capacity=8, policy="block", stats=stats)
    outbox = Edge("out", capacity=8, policy="block", stats=stats)
    inbox.add_producer()
    outbox.add_producer()
    node = SimpleNamespace(name="keep", stage=HoldToTheEnd())
    run = StageRun(node, inbox, [outbox], stats=stats, inputs_carrying=lambda _: 1, stop_stream=lambda *_: None)  # type: ignore[arg-type]
    task = asyncio.create_task(run.run())
    kept = item(0)
    await inbox.put(StreamStarted(StreamInfo(stream_id="s", uri="test://", live=False)))
    await inbox.put(kept)
    await asyncio.sleep(0.01)  # kept in the stage until its stream ends
    await inbox.put(EndOfStream("s"))
    inbox.producer_done()
    await asyncio.wait_for(task, 10)
    assert await outbox.get() is not None  # StreamStarted
    before = time.time()
    assert await outbox.get() is kept
    after = time.time()
    assert kept.timings_ms["post"] >= 5.0
    assert_tiled(kept, before, after)
