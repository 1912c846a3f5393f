"""pipeline.runner: tiny graphs of test-only stages, run for real on the event loop.

The stages below are referenced from the configs as ``class: <this module>:Name``, so they go
through the same build_graph path as a user's own stages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from fractions import Fraction
from typing import Literal

import pytest
from pydantic import Field

from pipeline.config import parse_config
from pipeline.errors import StreamError
from pipeline.graph import Graph, build_graph
from pipeline.media import EncodedPacket, EndOfStream, Item, StreamInfo, StreamStarted, StreamStatus
from pipeline.runner import Runner, RunSummary
from pipeline.stage import Source, Stage, StageParams

HERE = __name__


# --- test-only stages ----------------------------------------------------------------------------


class ListSourceParams(StageParams):
    streams: list[str] = Field(default_factory=lambda: ["s"])
    count: int = 5
    hold: bool = False
    """After emitting, wait for a stop request and end the streams as ``stopped``."""
    crash_after: int | None = None
    """Raise (a bug in the source) after emitting this many items of each stream."""


class ListSource(Source):
    """Emits ``count`` items per stream, interleaved across streams, then ends them."""

    Params = ListSourceParams
    params: ListSourceParams

    def __init__(self, name, params) -> None:
        super().__init__(name, params)
        self.emitted = asyncio.Event()
        self.stop_requests: list[tuple[str, str]] = []

    def stop_stream(self, stream_id: str, reason: str) -> None:
        self.stop_requests.append((stream_id, reason))

    async def run(self, emit) -> None:
        for sid in self.params.streams:
            await emit(StreamStarted(StreamInfo(stream_id=sid, uri=f"test://{sid}", live=False)))
        for seq in range(self.params.count):
            if seq == self.params.crash_after:
                raise RuntimeError("source bug")
            for sid in self.params.streams:
                media = EncodedPacket(None, seq, Fraction(1, 30), True)
                await emit(Item(stream_id=sid, media=media, capture_time=1000.0 + seq, seq=seq))
        self.emitted.set()
        reason: Literal["eof", "stopped"] = "eof"
        if self.params.hold:
            await self.stopping.wait()
            reason = "stopped"
        for sid in self.params.streams:
            await emit(EndOfStream(sid, reason))


class StatusSourceParams(StageParams):
    script: list[str] = Field(default_factory=lambda: ["connecting", "start", "0", "1", "stalled", "2", "end"])
    """``start``/``end``: the stream's start and end; a number: an item with that seq; anything
    else: a status (``name`` or ``name:detail``)."""


class StatusSource(Source):
    """Plays a script of starts, items, statuses and ends for stream 's' (a live source)."""

    Params = StatusSourceParams
    params: StatusSourceParams

    async def run(self, emit) -> None:
        for step in self.params.script:
            if step == "start":
                await emit(StreamStarted(StreamInfo(stream_id="s", uri="test://s", live=True)))
            elif step == "end":
                await emit(EndOfStream("s", "stopped"))
            elif step.isdigit():
                media = EncodedPacket(None, int(step), Fraction(1, 30), True)
                await emit(Item(stream_id="s", media=media, capture_time=1000.0, seq=int(step)))
            else:
                status, _, detail = step.partition(":")
                await emit(StreamStatus("s", status, detail or None))  # type: ignore[arg-type]


class RecorderParams(StageParams):
    mark: bool = False
    """Write this stage's name into each item's results and tensors (as a branch would)."""
    forward: bool = False


class Recorder(Stage):
    """Records everything it sees, in order."""

    Params = RecorderParams
    params: RecorderParams

    def __init__(self, name, params) -> None:
        super().__init__(name, params)
        self.events: list[tuple] = []
        self.items: list[Item] = []
        self.seen_results: list[set[str]] = []
        self.via: list[str] = []
        self.ends: list[EndOfStream] = []

    async def on_stream_added(self, info: StreamInfo) -> None:
        self.events.append(("added", info.stream_id))

    async def process(self, item: Item) -> Sequence[Item]:
        self.events.append(("item", item.stream_id, item.seq))
        self.items.append(item)
        self.via.append(item.last_stage)
        self.seen_results.append(set(item.results))
        if self.params.mark:
            item.results[self.name] = {"type": "mark"}
            item.tensors[self.name] = object()
        return (item,) if self.params.forward else ()

    async def on_input_ended(self, eos: EndOfStream) -> None:
        self.events.append(("input_ended", eos.stream_id, eos.via))

    async def on_stream_status(self, status: StreamStatus) -> None:
        self.events.append(("status", status.stream_id, status.status, status.detail))

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        self.events.append(("ended", eos.stream_id, eos.reason))
        self.ends.append(eos)
        return ()

    def seqs(self, stream_id: str) -> list[int]:
        return [e[2] for e in self.events if e[0] == "item" and e[1] == stream_id]


class FaultyParams(StageParams):
    fail_seq: int
    stream: str | None = None
    kind: Literal["error", "stream_error"] = "error"


class Faulty(Stage):
    """Passes items on, except one that raises (a bug, or a broken stream)."""

    Params = FaultyParams
    params: FaultyParams

    def __init__(self, name, params) -> None:
        super().__init__(name, params)
        self.ended: list[str] = []

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        self.ended.append(eos.stream_id)
        return ()

    async def process(self, item: Item) -> Sequence[Item]:
        await asyncio.sleep(0)
        if item.seq == self.params.fail_seq and self.params.stream in (None, item.stream_id):
            if self.params.kind == "stream_error":
                raise StreamError(item.stream_id, "boom")
            raise ValueError("bug in stage")
        return (item,)


class Jitter(Stage):
    """Yields to the loop a varying number of times per item, and times itself as 'infer'."""

    latency_key = "infer"

    async def process(self, item: Item) -> Sequence[Item]:
        for _ in range(item.seq % 3):
            await asyncio.sleep(0)
        return (item,)


class Holder(Stage):
    """Holds every item until its stream ends (as a decoder holds its last frames)."""

    def __init__(self, name, params) -> None:
        super().__init__(name, params)
        self.held: dict[str, list[Item]] = {}

    async def process(self, item: Item) -> Sequence[Item]:
        self.held.setdefault(item.stream_id, []).append(item)
        return ()

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        return self.held.pop(eos.stream_id, [])


class Gate(Stage):
    """Holds each item until the test opens the gate."""

    def __init__(self, name, params) -> None:
        super().__init__(name, params)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def process(self, item: Item) -> Sequence[Item]:
        self.entered.set()
        await self.gate.wait()
        return (item,)


class HoldFirstOfA(Stage):
    """Works on 4 items at once; holds stream a's first item until the test opens the gate."""

    def __init__(self, name, params) -> None:
        super().__init__(name, params)
        self.gate = asyncio.Event()

    @property
    def max_in_flight(self) -> int:
        return 4

    async def process(self, item: Item) -> Sequence[Item]:
        if (item.stream_id, item.seq) == ("a", 0):
            await self.gate.wait()
        return (item,)


class Stuck(Stage):
    """Never finishes its first item."""

    def __init__(self, name, params) -> None:
        super().__init__(name, params)
        self.entered = asyncio.Event()

    async def process(self, item: Item) -> Sequence[Item]:
        self.entered.set()
        await asyncio.Event().wait()
        return (item,)


class BadStatusHook(Stage):
    """Its status hook raises (a bug): the status must still go on."""

    async def on_stream_status(self, status: StreamStatus) -> None:
        raise RuntimeError("bug in the status hook")


class FailOnAdd(Stage):
    """Cannot handle stream 'a' (e.g. a codec it has no decoder for)."""

    async def on_stream_added(self, info: StreamInfo) -> None:
        if info.stream_id == "a":
            raise StreamError(info.stream_id, "no decoder for this stream")


# --- helpers ----------------------------------------------------------------------------------------


def node(name: str, cls: str, inputs: Sequence[str] = (), **extra) -> dict:
    return {"name": name, "class": f"{HERE}:{cls}", "inputs": list(inputs), **extra}


def make_graph(*stages: dict) -> Graph:
    return build_graph(parse_config({"pipeline": "unit", "stages": list(stages)}))


def make_runner(graph: Graph, tmp_path, drain_timeout_s: float = 0.2) -> Runner:
    return Runner(graph, base_dir=tmp_path, threads=2, drain_timeout_s=drain_timeout_s)


def stage_of(graph: Graph, name: str):
    return graph.nodes[name].stage


# --- tests ------------------------------------------------------------------------------------------


async def test_items_flow_in_order_per_stream(tmp_path):
    graph = make_graph(
        node("src", "ListSource", params={"streams": ["a", "b"], "count": 20}),
        node("jitter", "Jitter", ["src"], edge={"capacity": 1}),
        node("sink", "Recorder", ["jitter"], edge={"capacity": 2}),
    )
    runner = make_runner(graph, tmp_path)
    summary = await runner.run()
    sink = stage_of(graph, "sink")

    assert isinstance(summary, RunSummary)
    assert summary.pipeline == "unit"
    assert not summary.interrupted
    assert runner.started.is_set()
    for sid in ("a", "b"):
        assert sink.seqs(sid) == list(range(20))
        events = [e for e in sink.events if e[1] == sid]
        assert events[0] == ("added", sid)
        assert events[-1] == ("ended", sid, "eof")
    assert summary.stats.dropped == 0
    assert summary.failed_streams == []
    # Timings: the stage's latency bucket and the edges' queue time travel with the item.
    assert all("infer" in item.timings_ms and "queue" in item.timings_ms for item in sink.items)


async def test_a_slow_item_holds_back_only_its_own_stream(tmp_path):
    graph = make_graph(
        node("src", "ListSource", params={"streams": ["a", "b"], "count": 2}),
        node("hold", "HoldFirstOfA", ["src"]),
        node("sink", "Recorder", ["hold"]),
    )
    run = asyncio.create_task(make_runner(graph, tmp_path).run())
    sink = stage_of(graph, "sink")
    for _ in range(10_000):  # until b has gone through (a hang guard, not a timing assertion)
        if sink.seqs("b") == [0, 1]:
            break
        await asyncio.sleep(0)
    # b's results left while a's first item was still being worked on; a keeps its own order.
    assert sink.seqs("b") == [0, 1] and sink.seqs("a") == []
    stage_of(graph, "hold").gate.set()
    await asyncio.wait_for(run, 30)
    assert sink.seqs("a") == [0, 1]


async def test_exception_drops_only_that_item(tmp_path):
    graph = make_graph(
        node("src", "ListSource", params={"count": 5}),
        node("faulty", "Faulty", ["src"], params={"fail_seq": 2}),
        node("sink", "Recorder", ["faulty"]),
    )
    summary = await make_runner(graph, tmp_path).run()
    sink = stage_of(graph, "sink")
    assert sink.seqs("s") == [0, 1, 3, 4]
    assert [(e.stream_id, e.reason) for e in sink.ends] == [("s", "eof")]
    counters = summary.stats.stream("s")
    assert counters.drops == {"error:faulty": 1}
    assert counters.error is None
    assert summary.failed_streams == []


async def test_stream_error_ends_that_stream_only(tmp_path):
    graph = make_graph(
        node("src", "ListSource", params={"streams": ["a", "b"], "count": 5}),
        node("faulty", "Faulty", ["src"], params={"fail_seq": 2, "stream": "a", "kind": "stream_error"}),
        node("sink", "Recorder", ["faulty"]),
    )
    summary = await make_runner(graph, tmp_path).run()
    sink = stage_of(graph, "sink")

    assert sink.seqs("a") == [0, 1]
    assert sink.seqs("b") == [0, 1, 2, 3, 4]
    ends = {e.stream_id: e for e in sink.ends}
    assert len(sink.ends) == 2  # exactly one end per stream: the source's later 'eof' for a is swallowed
    assert (ends["a"].reason, ends["a"].error) == ("error", "boom")
    assert ends["b"].reason == "eof"
    # The error reaches the sink before b is done: b keeps flowing after a failed.
    assert sink.events.index(("ended", "a", "error")) < sink.events.index(("item", "b", 4))

    assert summary.failed_streams == [("a", "boom")]
    assert summary.stats.stream("a").drops == {"stream_error": 1, "failed:faulty": 2}
    assert summary.stats.stream("b").dropped == 0
    assert stage_of(graph, "src").stop_requests == [("a", "boom")]


async def test_stage_that_failed_a_stream_still_gets_its_end(tmp_path):
    graph = make_graph(
        node("src", "ListSource", params={"streams": ["a", "b"], "count": 4}),
        node("faulty", "Faulty", ["src"], params={"fail_seq": 1, "stream": "a", "kind": "stream_error"}),
        node("sink", "Recorder", ["faulty"]),
    )
    await make_runner(graph, tmp_path).run()
    faulty = stage_of(graph, "faulty")
    assert "b" in faulty.ended
    assert "a" in faulty.ended


async def test_stream_error_when_a_stream_is_added_ends_that_stream_only(tmp_path):
    graph = make_graph(
        node("src", "ListSource", params={"streams": ["a", "b"], "count": 3}),
        node("picky", "FailOnAdd", ["src"]),
        node("sink", "Recorder", ["picky"]),
    )
    summary = await make_runner(graph, tmp_path).run()
    sink = stage_of(graph, "sink")
    assert sink.seqs("b") == [0, 1, 2]
    assert sink.seqs("a") == []
    assert [(e.stream_id, e.reason) for e in sink.ends if e.stream_id == "a"] == [("a", "error")]
    assert summary.stats.stream("a").error == "no decoder for this stream"


async def test_a_crashing_source_ends_its_own_streams_and_the_other_source_goes_on(tmp_path):
    graph = make_graph(
        node("bad", "ListSource", params={"streams": ["a"], "count": 5, "crash_after": 2}),
        node("good", "ListSource", params={"streams": ["b"], "count": 5}),
        node("sink", "Recorder", ["bad", "good"]),
    )
    summary = await make_runner(graph, tmp_path).run()
    sink = stage_of(graph, "sink")
    assert sink.seqs("a") == [0, 1]
    assert sink.seqs("b") == [0, 1, 2, 3, 4]
    ends = {e.stream_id: e for e in sink.ends}
    assert (ends["a"].reason, ends["b"].reason) == ("error", "eof")
    assert ends["a"].error == "source bad: RuntimeError: source bug"
    assert summary.failed_streams == [("a", "source bad: RuntimeError: source bug")]


async def test_fan_out_gives_each_branch_its_own_item(tmp_path):
    graph = make_graph(
        node("src", "ListSource", params={"count": 4}),
        node("left", "Recorder", ["src"], params={"mark": True}),
        node("right", "Recorder", ["src"], params={"mark": True}),
    )
    await make_runner(graph, tmp_path).run()
    left, right = stage_of(graph, "left"), stage_of(graph, "right")
    assert left.seqs("s") == right.seqs("s") == [0, 1, 2, 3]
    for mine, theirs in zip(left.items, right.items, strict=True):
        assert mine is not theirs
        assert mine.results is not theirs.results
        assert mine.tensors is not theirs.tensors
        assert set(mine.results) == {"left"}
        assert set(theirs.results) == {"right"}
        assert set(mine.tensors) == {"left"}
        assert set(theirs.tensors) == {"right"}
    # Neither branch saw what the other wrote.
    assert all(seen == set() for seen in left.seen_results + right.seen_results)


async def test_fan_out_to_three_branches_under_backpressure_keeps_branches_apart(tmp_path):
    graph = make_graph(
        node("src", "ListSource", params={"count": 6}),
        node("first", "Recorder", ["src"], params={"mark": True}),
        node("slow", "Recorder", ["src"], edge={"capacity": 1}),
        node("last", "Recorder", ["src"]),
    )
    await make_runner(graph, tmp_path).run()
    last = stage_of(graph, "last")
    assert last.seqs("s") == list(range(6))
    assert all(seen == set() for seen in last.seen_results), last.seen_results


async def test_fan_in_of_two_sources_carries_both_streams(tmp_path):
    graph = make_graph(
        node("one", "ListSource", params={"streams": ["x"], "count": 3}),
        node("two", "ListSource", params={"streams": ["y"], "count": 2}),
        node("sink", "Recorder", ["one", "two"]),
    )
    runner = make_runner(graph, tmp_path)
    await runner.run()
    sink = stage_of(graph, "sink")
    assert sink.seqs("x") == [0, 1, 2]
    assert sink.seqs("y") == [0, 1]
    assert sorted((e.stream_id, e.reason) for e in sink.ends) == [("x", "eof"), ("y", "eof")]
    assert runner.edges["sink"].closed


async def test_diamond_merge_starts_and_ends_a_stream_once(tmp_path):
    graph = make_graph(
        node("src", "ListSource", params={"count": 3}),
        node("left", "Recorder", ["src"], params={"forward": True}),
        node("right", "Recorder", ["src"], params={"forward": True}),
        node("merge", "Recorder", ["left", "right"], params={"forward": True}),
        node("sink", "Recorder", ["merge"]),
    )
    await make_runner(graph, tmp_path).run()
    merge, sink = stage_of(graph, "merge"), stage_of(graph, "sink")
    assert sorted(merge.seqs("s")) == [0, 0, 1, 1, 2, 2]
    # Each item says which branch it came through (a join tells its inputs apart by it).
    assert sorted(merge.via) == ["left"] * 3 + ["right"] * 3
    assert set(stage_of(graph, "left").via) == {"src"}
    control = [e for e in merge.events if e[0] != "item"]
    # The first branch to end is reported as it arrives; the stream ends with the last.
    assert control[0] == ("added", "s") and control[-1] == ("ended", "s", "eof")
    assert control[1][:2] == ("input_ended", "s") and control[1][2] in ("left", "right")
    assert len(control) == 3
    assert sink.events[0] == ("added", "s")
    assert sink.events[-1] == ("ended", "s", "eof")
    assert len(sink.ends) == 1


async def test_items_returned_at_stream_end_go_before_its_end(tmp_path):
    graph = make_graph(
        node("src", "ListSource", params={"streams": ["a", "b"], "count": 3}),
        node("hold", "Holder", ["src"]),
        node("sink", "Recorder", ["hold"]),
    )
    await make_runner(graph, tmp_path).run()
    sink = stage_of(graph, "sink")
    for sid in ("a", "b"):
        assert sink.seqs(sid) == [0, 1, 2]
        assert sink.events.index(("item", sid, 2)) < sink.events.index(("ended", sid, "eof"))


async def test_request_stop_drains_items_already_emitted(tmp_path):
    graph = make_graph(
        node("src", "ListSource", params={"count": 3, "hold": True}),
        node("gate", "Gate", ["src"]),
        node("sink", "Recorder", ["gate"]),
    )
    runner = make_runner(graph, tmp_path, drain_timeout_s=3600)
    run = asyncio.create_task(runner.run())
    src, gate = stage_of(graph, "src"), stage_of(graph, "gate")
    await src.emitted.wait()
    await gate.entered.wait()  # item 0 is in process, 1 and 2 wait in the edge

    runner.request_stop()
    assert runner.stopping
    assert src.stopping.is_set()
    gate.gate.set()
    summary = await run

    sink = stage_of(graph, "sink")
    assert sink.seqs("s") == [0, 1, 2]
    assert [(e.stream_id, e.reason) for e in sink.ends] == [("s", "stopped")]
    assert summary.interrupted
    assert summary.stats.dropped == 0


async def test_stuck_stage_is_cancelled_after_the_drain_timeout(tmp_path):
    graph = make_graph(
        node("src", "ListSource", params={"count": 3, "hold": True}),
        node("stuck", "Stuck", ["src"]),
        node("sink", "Recorder", ["stuck"]),
    )
    runner = make_runner(graph, tmp_path, drain_timeout_s=0.2)
    run = asyncio.create_task(runner.run())
    await stage_of(graph, "stuck").entered.wait()
    runner.request_stop()
    summary = await run

    assert summary.interrupted
    # Item 0 was in flight, items 1 and 2 were still waiting in the edge: all counted, none lost.
    assert summary.stats.stream("s").drops == {"shutdown": 3}
    assert stage_of(graph, "sink").items == []
    assert all(edge.depth == 0 for edge in runner.edges.values())
    # The stream's end never got through the stuck stage: every stage still ends it, as stopped
    # (a publisher sends its `ended` event even after an aborted drain).
    assert [(e.stream_id, e.reason) for e in stage_of(graph, "sink").ends] == [("s", "stopped")]


@pytest.mark.timeout(30)
async def test_second_stop_request_aborts_without_waiting_for_the_drain(tmp_path):
    graph = make_graph(
        node("src", "ListSource", params={"count": 2, "hold": True}),
        node("stuck", "Stuck", ["src"]),
        node("sink", "Recorder", ["stuck"]),
    )
    runner = make_runner(graph, tmp_path, drain_timeout_s=3600)
    run = asyncio.create_task(runner.run())
    await stage_of(graph, "stuck").entered.wait()
    runner.request_stop()
    runner.request_stop()
    summary = await run
    assert summary.stats.stream("s").drops == {"shutdown": 2}


async def test_runner_builds_one_edge_per_non_source_stage(tmp_path):
    graph = make_graph(
        node("src", "ListSource", params={"count": 1}),
        node("sink", "Recorder", ["src"], edge={"capacity": 3, "policy": "drop_oldest"}),
    )
    runner = make_runner(graph, tmp_path)
    await runner.run()
    edges = runner.edges
    assert list(edges) == ["sink"]
    assert (edges["sink"].capacity, edges["sink"].policy) == (3, "drop_oldest")
    assert edges["sink"].closed


# --- stream status (live sources) ---------------------------------------------------------------


def timeline(recorder) -> list[tuple]:
    return [e[:3] if e[0] == "status" else e for e in recorder.events]


async def test_status_passes_every_stage_in_order_with_the_items(tmp_path):
    graph = make_graph(
        node("src", "StatusSource"),
        node("jitter", "Jitter", ["src"], edge={"capacity": 1}),
        node("mid", "Recorder", ["jitter"], params={"forward": True}),
        node("sink", "Recorder", ["mid"]),
    )
    await make_runner(graph, tmp_path).run()
    expected = [
        ("status", "s", "connecting"),
        ("added", "s"),
        ("item", "s", 0),
        ("item", "s", 1),
        ("status", "s", "stalled"),
        ("item", "s", 2),
        ("ended", "s", "stopped"),
    ]
    assert timeline(stage_of(graph, "mid")) == expected
    assert timeline(stage_of(graph, "sink")) == expected


async def test_status_behind_a_diamond_is_passed_on_once_and_a_repeated_one_again(tmp_path):
    script = ["connecting", "start", "0", "stalled:x", "stalled:x", "1", "reconnecting:1", "2", "end"]
    graph = make_graph(
        node("src", "StatusSource", params={"script": script}),
        node("left", "Recorder", ["src"], params={"forward": True}),
        node("slow", "Jitter", ["src"], edge={"capacity": 1}),
        node("merge", "Recorder", ["left", "slow"], params={"forward": True}),
        node("sink", "Recorder", ["merge"]),
    )
    await make_runner(graph, tmp_path).run()
    for name in ("merge", "sink"):
        statuses = [e[2:] for e in stage_of(graph, name).events if e[0] == "status"]
        assert statuses == [("connecting", None), ("stalled", "x"), ("stalled", "x"), ("reconnecting", "1")], name
    sink = stage_of(graph, "sink")
    # Each status comes after the items the source sent before it (from the first branch to bring it).
    events = [e for e in sink.events if e[0] in ("status", "item")]
    assert events.index(("status", "s", "reconnecting", "1")) > events.index(("item", "s", 1))


async def test_a_failing_status_hook_still_passes_the_status_on(tmp_path):
    graph = make_graph(
        node("src", "StatusSource"),
        node("bad", "BadStatusHook", ["src"]),
        node("sink", "Recorder", ["bad"]),
    )
    summary = await make_runner(graph, tmp_path).run()
    sink = stage_of(graph, "sink")
    assert [e[2] for e in sink.events if e[0] == "status"] == ["connecting", "stalled"]
    assert sink.seqs("s") == [0, 1, 2]
    assert summary.failed_streams == []


async def test_statuses_of_a_stream_that_failed_in_a_stage_stop_there(tmp_path):
    script = ["start", "0", "1", "stalled", "2", "end"]
    graph = make_graph(
        node("src", "StatusSource", params={"script": script}),
        node("faulty", "Faulty", ["src"], params={"fail_seq": 0, "kind": "stream_error"}),
        node("sink", "Recorder", ["faulty"]),
    )
    await make_runner(graph, tmp_path).run()
    sink = stage_of(graph, "sink")
    assert timeline(sink) == [("added", "s"), ("ended", "s", "error")]
