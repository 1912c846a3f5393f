"""pipeline.media.Item.mark: an item's latency parts tile its time since capture."""

from __future__ import annotations

from fractions import Fraction

import pytest

from pipeline.media import Item, VideoFrame

CAPTURED = 1_700_000_000.0
TOLERANCE_MS = 1e-3
"""Wall-clock seconds near 1.7e9 are exact to about 0.24 us, so ms compare to within 1 us."""


def approx(expected: object) -> object:
    return pytest.approx(expected, abs=TOLERANCE_MS)


def item() -> Item:
    return Item(stream_id="s", media=VideoFrame(None, 0, Fraction(1, 25), 1, 1), capture_time=CAPTURED, seq=0)


def test_each_mark_takes_the_time_since_the_last_part_ended():
    it = item()
    assert it.mark("ingest", now=CAPTURED + 0.002) == approx(2.0)
    assert it.mark("queue", now=CAPTURED + 0.010) == approx(8.0)
    assert it.mark("queue", now=CAPTURED + 0.015) == approx(5.0)  # a second edge adds to it
    assert it.timings_ms == approx({"ingest": 2.0, "queue": 13.0})
    assert sum(it.timings_ms.values()) == approx(15.0)  # the item's age at its last mark


def test_a_part_a_stage_measured_itself_moves_the_next_mark_on():
    it = item()
    it.mark("blocked", now=CAPTURED + 0.001)
    it.add_time("batch_wait", 4.0)  # of the 10 ms to come, 4 were in the batcher
    assert it.mark("infer", now=CAPTURED + 0.011) == approx(6.0)
    assert sum(it.timings_ms.values()) == approx(11.0)


def test_a_mark_is_never_negative():
    it = item()
    it.add_time("decode", 50.0)  # a clock that stepped back: the parts reach past now
    assert it.mark("queue", now=CAPTURED + 0.010) == 0.0
    assert it.timings_ms["queue"] == 0.0
    assert it.unaccounted_ms(CAPTURED + 0.060) == approx(10.0)


def test_an_item_made_from_another_s_timings_continues_its_timeline():
    # A decoder's frame takes its packet's capture time and parts: its next mark counts from where
    # the packet's last part ended, not from the frame's creation.
    packet = item()
    packet.mark("queue", now=CAPTURED + 0.004)
    frame = Item(stream_id="s", media=packet.media, capture_time=packet.capture_time, seq=0)
    frame.timings_ms.update(packet.timings_ms)
    assert frame.mark("decode", now=CAPTURED + 0.010) == approx(6.0)
    fork = frame.fork()
    assert fork.mark("blocked", now=CAPTURED + 0.012) == approx(2.0)
    assert frame.unaccounted_ms(CAPTURED + 0.012) == approx(2.0)  # the fork's mark is its own
