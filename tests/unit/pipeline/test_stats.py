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


def test_consumed_counts_apart_from_drops_and_totals_across_streams():
    stats = StreamStats()
    stats.stream("a").consumed = 300
    stats.stream("b").consumed = 10
    assert stats.consumed == 310
    assert stats.dropped == 0
    assert StreamCounters().consumed == 0


def test_decoded_is_published_plus_dropped_plus_consumed_for_every_item_a_stream_had():
    # The bookkeeping of a speech pipeline: windows decoded, a few published (a segment closed on
    # them), one lost on a full edge, one failed in a stage, the rest folded into segments.
    stats = StreamStats()
    counters = stats.stream("mic")
    fates = ["published"] * 4 + ["edge:vad", "error:speech"] + ["consumed"] * 307
    for seq, fate in enumerate(fates):
        counters.decoded += 1
        if fate == "published":
            counters.published += 1
        elif fate == "consumed":
            counters.consumed += 1
        else:
            stats.drop_item(make_item("mic", seq), fate)
    stats.drop_item(make_item("mic", -1), "shutdown")  # a packet: not a decoded item, not in the sum
    assert counters.decoded == counters.published + counters.dropped + counters.consumed == 313
    assert (stats.decoded, stats.published, stats.dropped, stats.consumed) == (313, 4, 2, 307)


def _ended_run_time_stream(stats: StreamStats, stream_id: str, *, published: int, dropped: int = 0) -> None:
    counters = stats.stream(stream_id)
    counters.decoded, counters.published = published + dropped, published
    if dropped:
        stats.count_drop(stream_id, "edge:infer", dropped)
    counters.added_at_run_time = counters.ended = True


def test_old_ended_run_time_streams_are_folded_into_retired_totals():
    stats = StreamStats(keep_ended=2)
    config_stream = stats.stream("config")
    config_stream.decoded = config_stream.published = 1
    config_stream.ended = True
    for index in range(5):
        _ended_run_time_stream(stats, f"s{index}", published=10, dropped=1)
    stats.stream("live")  # a new stream is when old ones are retired

    kept = [stream_id for stream_id, _ in stats.items()]
    assert kept == ["config", "s3", "s4", "live"], "the oldest ended ones go; the config's never does"
    assert (stats.retired_streams, stats.stream_count) == (3, 7)
    # ...while every total still counts them.
    assert (stats.decoded, stats.published, stats.dropped) == (56, 51, 5)
    assert stats.drops_by_reason() == {"edge:infer": 5}


def test_a_stream_still_settling_or_running_is_never_retired():
    stats = StreamStats(keep_ended=0)
    _ended_run_time_stream(stats, "unsettled", published=3)
    stats.stream("unsettled").decoded += 1  # one result still on its way to the bus
    running = stats.stream("running")
    running.added_at_run_time = True
    stats.stream("new")
    assert [stream_id for stream_id, _ in stats.items()] == ["unsettled", "running", "new"]
