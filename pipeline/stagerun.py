"""Runs one stage: reads its edge, processes items, and passes each stream's results on in order.

A stage may work on up to ``stage.max_in_flight`` items at once (an ``infer`` stage needs many in
flight to fill a batch across streams); a reader starts them, and one writer per stream awaits
that stream's items in the order they arrived and emits their results. Per-stream order never
changes, and a slow item holds back only its own stream (a batcher serves streams round-robin,
so a global order would make every stream wait for the slowest).

Stream lifecycle, per stage: a stream starts on the first ``StreamStarted`` through any input
and ends on the last ``EndOfStream`` (a stage behind a diamond gets one through each input that
carries the stream). A stream that fails in this stage (``StreamError``, or any exception while
it is added) is ended here at once: the stage still gets ``on_stream_ended``, downstream gets
the error, the sources are asked to stop the stream, and its later ends are swallowed.

A ``StreamStatus`` (a live source connecting, stalled, reconnecting) is an ordered slot like an
end: the stage's ``on_stream_status`` sees it after the items before it and before the items
after it, then it goes downstream (a status before the stream's start, "connecting", is handled
before the stream is added). Behind several inputs it is passed on once: every input
carries the same statuses in the same order (control messages are never dropped), so the n-th
status of a stream through any input is the n-th status the source sent, and the stage passes it
on when the first input delivers it. Counting per input (not comparing contents) keeps a status
the source repeats ("stalled" twice) and never swallows one.

An item's latency parts tile its time (``Item.mark``: each part runs from the end of the one
before to the moment the runner or a stage sees it end), so they add up to its total. Here end:
``blocked`` once the item has a free in-flight slot of the stage, the stage's ``latency_key``
when ``process`` (or ``on_stream_ended``, for what a stage hands back then) returns, and
``ordering`` when a result is passed on (after its stream's earlier items; also whatever a stage
with no ``latency_key`` did not mark itself). Edges end ``blocked`` and ``queue``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .edges import Edge, EdgeClosed
from .errors import StreamError
from .graph import Node
from .media import EndOfStream, Item, Message, StreamStarted, StreamStatus
from .stats import StreamStats

log = logging.getLogger("streamgraph.runner")


async def fan_out(message: Message, outputs: Sequence[Edge], *, via: str) -> None:
    """Put ``message`` on every output, stamped with the stage it passes through (``via``);
    each branch after the first gets its own copy of an item."""
    if isinstance(message, Item):
        message.last_stage = via
        # Every branch's copy is made before any branch can see (and change) the item.
        copies: list[Message] = [message, *(message.fork() for _ in outputs[1:])]
    else:
        if isinstance(message, EndOfStream | StreamStatus):
            message = dataclasses.replace(message, via=via)
        copies = [message] * len(outputs)
    for edge, copy in zip(outputs, copies, strict=True):
        await edge.put(copy)  # marks the copy's wait to get in (behind the copies before it too)


async def emit_all(items: Sequence[Item], outputs: Sequence[Edge], stats: StreamStats, *, via: str) -> None:
    """Emit ``items`` in order; on cancellation the ones not yet passed on are counted as dropped."""
    for index, item in enumerate(items):
        try:
            await fan_out(item, outputs, via=via)
        except asyncio.CancelledError:
            for lost in items[index:]:
                stats.drop_item(lost, "shutdown")
            raise


@dataclass
class StreamEntry:
    """One stream as one stage sees it: how many of its inputs carry it, and where it stands."""

    inputs: int
    started: int = 0
    ended: int = 0
    failed: bool = False
    end: EndOfStream | None = None
    """The most telling end received so far: an error over a stop over a plain end of file."""
    statuses_passed: int = 0
    statuses_from: dict[str, int] = dataclasses.field(default_factory=dict)
    """Statuses received per input (``via``): the n-th is passed on when the first input brings it."""
    last_status: asyncio.Event | None = None
    """Set once the writer has handled the stream's latest status (a stream is added only then)."""


_SEVERITY = {"eof": 0, "stopped": 1, "error": 2}


@dataclass(frozen=True, slots=True)
class _Failure:
    """``process`` gave up on the item's stream."""

    error: str


@dataclass(eq=False, slots=True)
class _Slot:
    """One message in arrival order: an item being processed, or a control message."""

    message: Message
    task: asyncio.Task[Sequence[Item] | _Failure] | None = None
    error: str | None = None
    """For a ``StreamStarted``: why adding the stream failed."""
    handled: asyncio.Event | None = None
    """For a ``StreamStatus``: set once the writer has passed it on."""


class StageRun:
    def __init__(
        self,
        node: Node,
        edge: Edge,
        outputs: Sequence[Edge],
        *,
        stats: StreamStats,
        inputs_carrying: Callable[[str], int],
        stop_stream: Callable[[str, str], None],
    ) -> None:
        self.node = node
        self.stage = node.stage
        self.edge = edge
        self.outputs = outputs
        self.stats = stats
        self._inputs_carrying = inputs_carrying
        self._stop_stream = stop_stream
        self.streams: dict[str, StreamEntry] = {}
        self._unfinished: set[_Slot] = set()
        self._lanes: dict[str, asyncio.Queue[_Slot | None]] = {}
        """One ordered queue and writer per stream: a stream's results wait only for its own."""
        self._group: asyncio.TaskGroup | None = None
        self._room = asyncio.Semaphore(max(1, self.stage.max_in_flight))

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                await self._read()
                for lane in self._lanes.values():
                    lane.put_nowait(None)
        except asyncio.CancelledError:
            for slot in self._unfinished:
                if slot.task is not None:
                    slot.task.cancel()
                if isinstance(slot.message, Item):
                    self.stats.drop_item(slot.message, "shutdown")
            raise

    async def end_abandoned_streams(self) -> None:
        """After an aborted drain: end every stream still open here as ``stopped``, so the stage
        releases it and a publisher still sends its ``ended`` event. What it hands back is dropped."""
        for stream_id, entry in list(self.streams.items()):
            del self.streams[stream_id]
            if not entry.failed and entry.started:
                await self._release(EndOfStream(stream_id, "stopped", via=self.node.name), "shutdown")

    async def _release(self, eos: EndOfStream, lost_as: str) -> None:
        """End a stream in this stage only: ``on_stream_ended``, and what it hands back is dropped."""
        try:
            tail = await self.stage.on_stream_ended(eos)
        except Exception:
            log.exception("stage %s failed ending stream %s", self.node.name, eos.stream_id)
            return
        for lost in tail:
            self.stats.drop_item(lost, lost_as)

    # --- reader: starts work in arrival order ---------------------------------------------------

    async def _read(self) -> None:
        while True:
            try:
                message = await self.edge.get()
            except EdgeClosed:
                return
            if isinstance(message, StreamStarted):
                entry = self._entry(message.stream_id)
                entry.started += 1
                if entry.started > 1:
                    continue  # announced already, through another of this stage's inputs
                if entry.last_status is not None:
                    # A live source's status came first ("connecting"): the stage sees it first.
                    await entry.last_status.wait()
                slot = _Slot(message, error=await self._add_stream(message))
            elif isinstance(message, EndOfStream):
                entry = self._entry(message.stream_id)
                entry.ended += 1
                if entry.end is None or _SEVERITY[message.reason] > _SEVERITY[entry.end.reason]:
                    entry.end = message
                if entry.ended < entry.inputs:
                    # Another input still carries the stream: tell the stage now (a join must
                    # not wait for that branch), end nothing yet.
                    if not entry.failed:
                        await self._input_ended(message)
                    continue
                slot = _Slot(message)
            elif isinstance(message, StreamStatus):
                if not self._first_arrival(message):
                    continue
                slot = _Slot(message, handled=asyncio.Event())
                self._entry(message.stream_id).last_status = slot.handled
            elif (known := self.streams.get(message.stream_id)) is not None and known.failed:
                self.stats.drop_item(message, f"failed:{self.node.name}")
                continue
            else:
                try:
                    await self._room.acquire()
                except asyncio.CancelledError:
                    self.stats.drop_item(message, "shutdown")
                    raise
                message.mark("blocked")
                slot = _Slot(message, task=asyncio.create_task(self._process(message)))
            self._unfinished.add(slot)
            self._lane(message.stream_id).put_nowait(slot)

    def _lane(self, stream_id: str) -> asyncio.Queue[_Slot | None]:
        lane = self._lanes.get(stream_id)
        if lane is None:
            assert self._group is not None
            lane = self._lanes[stream_id] = asyncio.Queue()
            self._group.create_task(self._write(stream_id, lane), name=f"{self.node.name}:{stream_id}")
        return lane

    def _first_arrival(self, status: StreamStatus) -> bool:
        entry = self._entry(status.stream_id)
        if entry.failed:
            return False
        count = entry.statuses_from[status.via] = entry.statuses_from.get(status.via, 0) + 1
        if count <= entry.statuses_passed:
            return False  # passed on already, when another input brought it
        entry.statuses_passed = count
        return True

    async def _input_ended(self, eos: EndOfStream) -> None:
        try:
            await self.stage.on_input_ended(eos)
        except Exception:
            log.exception("stage %s failed on the end of one input of stream %s", self.node.name, eos.stream_id)

    async def _add_stream(self, started: StreamStarted) -> str | None:
        try:
            await self.stage.on_stream_added(started.info)
        except Exception as exc:
            return self._describe(started.stream_id, exc)
        return None

    async def _process(self, item: Item) -> Sequence[Item] | _Failure:
        try:
            results = await self.stage.process(item)
        except StreamError as exc:
            return _Failure(exc.message)
        except Exception:
            # One bad item never sinks the stream or the process: log it, count it, move on.
            log.exception("stage %s failed on stream %s seq %d", self.node.name, item.stream_id, item.seq)
            self.stats.drop_item(item, f"error:{self.node.name}")
            return ()
        self._end_stage_part(results)
        return results

    # --- writer: passes results on in the same order --------------------------------------------

    async def _write(self, stream_id: str, lane: asyncio.Queue[_Slot | None]) -> None:
        while (slot := await lane.get()) is not None:
            message = slot.message
            if slot.task is not None:
                assert isinstance(message, Item)
                try:
                    outcome = await slot.task
                finally:
                    self._room.release()
                self._unfinished.discard(slot)
                if not isinstance(outcome, _Failure):
                    for result in outcome:
                        result.mark("ordering")
                await self._pass_on(message, outcome)
            elif isinstance(message, StreamStarted):
                self._unfinished.discard(slot)
                await fan_out(message, self.outputs, via=self.node.name)
                if slot.error is not None:
                    await self._fail_stream(message.stream_id, slot.error)
            elif isinstance(message, StreamStatus):
                self._unfinished.discard(slot)
                try:
                    await self._pass_status(message)
                finally:
                    assert slot.handled is not None
                    slot.handled.set()
            else:
                assert isinstance(message, EndOfStream)
                self._unfinished.discard(slot)
                await self._end_stream(message)
                if lane.empty() and stream_id not in self.streams:
                    del self._lanes[stream_id]  # ended here; a stream of the same id gets a new lane
                    return

    async def _pass_status(self, status: StreamStatus) -> None:
        entry = self.streams.get(status.stream_id)
        if entry is not None and entry.failed:
            return  # the stream already ended here with its error
        try:
            await self.stage.on_stream_status(status)
        except Exception:
            log.exception("stage %s failed on status %s of stream %s", self.node.name, status.status, status.stream_id)
        await fan_out(status, self.outputs, via=self.node.name)

    async def _pass_on(self, item: Item, outcome: Sequence[Item] | _Failure) -> None:
        entry = self.streams.get(item.stream_id)
        if isinstance(outcome, _Failure):
            self.stats.drop_item(item, "stream_error")
            if entry is None or not entry.failed:
                await self._fail_stream(item.stream_id, outcome.error)
        elif entry is not None and entry.failed:
            for lost in outcome:  # finished after its stream failed
                self.stats.drop_item(lost, f"failed:{self.node.name}")
        else:
            await emit_all(outcome, self.outputs, self.stats, via=self.node.name)

    def _entry(self, stream_id: str) -> StreamEntry:
        entry = self.streams.get(stream_id)
        if entry is None:
            entry = self.streams[stream_id] = StreamEntry(inputs=self._inputs_carrying(stream_id))
        return entry

    async def _fail_stream(self, stream_id: str, error: str) -> None:
        log.error("stream %s failed in stage %s: %s", stream_id, self.node.name, error)
        self._entry(stream_id).failed = True
        counters = self.stats.stream(stream_id)
        counters.error = counters.error or error
        self._stop_stream(stream_id, error)
        eos = EndOfStream(stream_id, "error", error, via=self.node.name)
        await self._release(eos, f"failed:{self.node.name}")
        await fan_out(eos, self.outputs, via=self.node.name)

    async def _end_stream(self, eos: EndOfStream) -> None:
        entry = self._entry(eos.stream_id)
        del self.streams[eos.stream_id]
        if entry.failed:
            return  # its end already went downstream when it failed
        assert entry.end is not None
        eos = entry.end
        tail: Sequence[Item] = ()
        try:
            tail = await self.stage.on_stream_ended(eos)
            self._end_stage_part(tail)
        except Exception as exc:
            error = self._describe(eos.stream_id, exc)
            self.stats.stream(eos.stream_id).error = error
            eos = EndOfStream(eos.stream_id, "error", error)
        await emit_all(tail, self.outputs, self.stats, via=self.node.name)
        await fan_out(eos, self.outputs, via=self.node.name)

    def _end_stage_part(self, items: Sequence[Item]) -> None:
        """The stage is done with ``items``: their time since their last part ended (getting a slot
        here, or whatever the stage marked itself) is its ``latency_key``'s. A stage without one
        marks its own parts; the rest of its time counts as ``ordering``."""
        key = self.stage.latency_key
        if key is not None:
            now = time.time()
            for item in items:
                item.mark(key, now=now)

    def _describe(self, stream_id: str, exc: Exception) -> str:
        if isinstance(exc, StreamError):
            return exc.message
        log.error("stage %s failed on stream %s", self.node.name, stream_id, exc_info=exc)
        return f"stage {self.node.name}: {type(exc).__name__}: {exc}"
