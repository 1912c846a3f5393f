"""pipeline.stats: per-stream counters and their totals."""

from __future__ import annotations

from fractions import Fraction

from pipeline.media import EncodedPacket, Item
from pipeline.stats import StreamCounters, StreamStats


def make_item(stream: str, seq: int) -> Item:
    return Item(stream_id=stream, media=EncodedPacket(None, 0, Fraction(1, 1), True), capture_time=0.0, seq=seq)


def test_stream_counters_are_created_on_first_use_and_reused():
    stats = StreamStats()
    counters = stats.stream("a")
    assert isinstance(counters, StreamCounters)
    assert stats.stream("a") is counters
    assert [sid for sid, _ in stats.items()] == ["a"]


def test_count_drop_accumulates_by_where():
    stats = StreamStats()
    stats.count_drop("a", "edge:x")
    stats.count_drop("a", "edge:x", 2)
    stats.count_drop("a", "shutdown")
    assert stats.stream("a").drops == {"edge:x": 3, "shutdown": 1}
    assert stats.stream("a").dropped == 4


def test_drop_item_counts_frames_by_where_and_packets_apart():
    stats = StreamStats()
    stats.drop_item(make_item("a", 0), "error:det")
    stats.drop_item(make_item("a", -1), "error:det")
    assert stats.stream("a").drops == {"error:det": 1}
    assert stats.stream("a").packets_dropped == 1
    assert stats.dropped == 1


def test_totals_across_streams():
    stats = StreamStats()
    stats.stream("a").decoded = 5
    stats.stream("b").decoded = 3
    stats.stream("a").published = 4
    stats.stream("b").published = 1
    stats.count_drop("a", "shutdown")
    stats.count_drop("b", "shutdown", 2)
    stats.count_drop("b", "edge:x")
    assert stats.decoded == 8
    assert stats.published == 5
    assert stats.dropped == 4
    assert stats.drops_by_reason() == {"shutdown": 3, "edge:x": 1}


def test_counters_do_not_share_drop_dicts():
    first, second = StreamCounters(), StreamCounters()
    first.drops["x"] = 1
    assert second.drops == {}
