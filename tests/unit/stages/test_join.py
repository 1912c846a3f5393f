"""stages.join: primary items collect the other branches' items of their time span."""

from __future__ import annotations

import asyncio
from fractions import Fraction

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.media import AudioChunk, EndOfStream, Item, StreamInfo, VideoFrame
from stages.join import Join, JoinParams

GUARD_S = 30  # hang guard only


def frame(seq: int) -> Item:
    media = VideoFrame(np.zeros((2, 2, 3), np.uint8), seq, Fraction(1, 25), 2, 2)  # 40 ms per frame
    item = Item(stream_id="s", media=media, capture_time=0.0, seq=seq, last_stage="text")
    item.results["text"] = {"type": "text_detection", "model": "m", "boxes": []}
    return item


def window(seq: int) -> Item:
    media = AudioChunk(np.zeros((1, 512), np.float32), seq * 512, Fraction(1, 16000), 16000)  # 32 ms each
    item = Item(stream_id="s", media=media, capture_time=0.0, seq=seq, last_stage="speech")
    item.results["speech"] = {"type": "speech_segments", "segments": [], "probability": 0.1 * (seq % 10)}
    return item


async def started(make_ctx, **params) -> Join:
    join = Join("joined", JoinParams(**params))
    await join.start(make_ctx("joined", input_stages=("text", "speech")))
    await join.on_stream_added(StreamInfo(stream_id="s", uri="test://", live=False, frame_rate=Fraction(25)))
    return join


async def test_a_frame_waits_for_the_other_branch_and_takes_the_items_of_its_span(make_ctx):
    join = await started(make_ctx, timeout_ms=60_000)
    pending = asyncio.create_task(join.process(frame(1)))  # span [0.04, 0.08)
    await asyncio.sleep(0)
    assert not pending.done()
    for seq in range(3):  # windows at 0.000, 0.032, 0.064
        assert await join.process(window(seq)) == ()
    assert not pending.done()  # nothing at or past 0.08 yet
    await join.process(window(3))  # 0.096
    (out,) = await asyncio.wait_for(pending, GUARD_S)
    joined = out.results["speech"]
    assert (joined["type"], joined["branch"], joined["status"]) == ("join", "speech", "ok")
    assert [i["seq"] for i in joined["items"]] == [2]  # only 0.064 lies in [0.04, 0.08)
    assert joined["items"][0]["results"]["speech"]["probability"] == pytest.approx(0.2)
    assert out.results["text"]["type"] == "text_detection"


async def test_branch_items_that_arrived_first_are_joined_without_waiting(make_ctx):
    join = await started(make_ctx, timeout_ms=60_000)
    for seq in range(5):
        await join.process(window(seq))
    (out,) = await asyncio.wait_for(join.process(frame(0)), GUARD_S)
    assert [i["seq"] for i in out.results["speech"]["items"]] == [0, 1]
    assert join.ctx.stats.stream("s").consumed == 2


async def test_a_silent_branch_is_marked_missing_after_the_timeout(make_ctx):
    join = await started(make_ctx, timeout_ms=20)
    (out,) = await asyncio.wait_for(join.process(frame(0)), GUARD_S)
    assert out.results["speech"] == {"type": "join", "branch": "speech", "status": "missing", "items": []}


async def test_the_end_of_a_branch_releases_waiting_frames_at_once(make_ctx):
    join = await started(make_ctx, timeout_ms=60_000)
    await join.process(window(0))
    waiting = [asyncio.create_task(join.process(frame(n))) for n in (0, 5)]
    await asyncio.sleep(0)
    await join.on_input_ended(EndOfStream("s", via="speech"))
    first, later = await asyncio.wait_for(asyncio.gather(*waiting), GUARD_S)
    # The branch delivered, then ended: its spans are complete, empty or not.
    assert first[0].results["speech"]["status"] == "ok"
    assert [i["seq"] for i in first[0].results["speech"]["items"]] == [0]
    assert later[0].results["speech"]["items"] == []


async def test_a_branch_that_ended_without_any_item_is_missing(make_ctx):
    join = await started(make_ctx, timeout_ms=60_000)
    await join.on_input_ended(EndOfStream("s", via="speech"))  # e.g. a file with no audio track
    (out,) = await asyncio.wait_for(join.process(frame(0)), GUARD_S)
    assert out.results["speech"]["status"] == "missing"


async def test_left_over_items_count_as_consumed_at_the_end(make_ctx):
    join = await started(make_ctx, timeout_ms=60_000)
    for seq in range(4):
        await join.process(window(seq))
    await join.on_stream_ended(EndOfStream("s"))
    counters = join.ctx.stats.stream("s")
    assert (counters.consumed, counters.dropped) == (4, 0)


async def test_too_many_held_items_drop_the_oldest_and_count_them(make_ctx):
    join = await started(make_ctx, max_buffered=3)
    for seq in range(5):
        await join.process(window(seq))
    assert join.ctx.stats.stream("s").drops == {"join:joined": 2}


async def test_join_needs_two_inputs_and_a_primary_among_them(make_ctx):
    with pytest.raises(ConfigError, match="at least two inputs"):
        await Join("j", JoinParams()).start(make_ctx("j", input_stages=("text",)))
    with pytest.raises(ConfigError, match="'nope' is not one of its inputs"):
        await Join("j", JoinParams(primary="nope")).start(make_ctx("j", input_stages=("text", "speech")))
