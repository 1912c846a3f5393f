"""Runs a graph: one task per stage, bounded edges between them, a drain on shutdown.

Shutdown (SIGINT/SIGTERM, or ``request_stop``): sources stop and end their streams, every item
already in flight finishes and is published, then the tasks exit. If draining takes longer than
``drain_timeout_s`` (or a second stop is asked), the remaining items are dropped and counted, so
that every decoded frame is either published or counted as dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .edges import Edge, EdgeClosed
from .errors import StreamError
from .graph import Graph, Node
from .media import EndOfStream, Item, Message, StreamStarted
from .stage import Source, StageContext
from .stats import StreamStats

if TYPE_CHECKING:
    from .bus import Bus

log = logging.getLogger("streamgraph.runner")


@dataclass(frozen=True)
class RunSummary:
    pipeline: str
    elapsed_s: float
    stats: StreamStats
    interrupted: bool

    @property
    def failed_streams(self) -> list[tuple[str, str]]:
        return [(sid, c.error) for sid, c in self.stats.items() if c.error]


class Runner:
    def __init__(
        self,
        graph: Graph,
        *,
        base_dir: Path,
        bus: Bus | None = None,
        threads: int = 4,
        drain_timeout_s: float = 3.0,
    ) -> None:
        self.graph = graph
        self.stats = StreamStats()
        self._base_dir = base_dir
        self._bus = bus
        self._threads = threads
        self._drain_timeout_s = drain_timeout_s
        self._edges: dict[str, Edge] = {}
        self._inputs_from = _inputs_from_sources(graph)
        self._origins: dict[str, str] = {}
        """stream id -> the source that produces it."""
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._drain_timer: asyncio.TimerHandle | None = None
        self.started = asyncio.Event()

    @property
    def edges(self) -> dict[str, Edge]:
        return dict(self._edges)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def request_stop(self) -> None:
        """First call: drain. Second call (or the drain timeout): drop what is left and exit."""
        if self._stopping:
            log.warning("second stop request: dropping in-flight items")
            self._abort()
            return
        self._stopping = True
        log.info("stopping: sources end their streams, in-flight items drain (up to %.1f s)", self._drain_timeout_s)
        for node in self.graph.sources:
            assert isinstance(node.stage, Source)
            node.stage.request_stop()
        loop = asyncio.get_running_loop()
        self._drain_timer = loop.call_later(self._drain_timeout_s, self._abort)

    async def run(self) -> RunSummary:
        started_at = time.monotonic()
        executor = ThreadPoolExecutor(self._threads, thread_name_prefix="streamgraph")
        try:
            self._build_edges()
            await self._start_stages(executor)
            self.started.set()
            async with asyncio.TaskGroup() as group:
                for name in self.graph.order:
                    node = self.graph.nodes[name]
                    outputs = [self._edges[c] for c in self.graph.consumers(name)]
                    coro = self._run_source(node, outputs) if node.is_source else self._run_stage(node, outputs)
                    self._tasks.append(group.create_task(coro, name=f"stage:{name}"))
        finally:
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            for edge in self._edges.values():
                edge.discard_all("shutdown")
            await self._stop_stages()
            executor.shutdown(wait=False, cancel_futures=True)
        return RunSummary(self.graph.pipeline, time.monotonic() - started_at, self.stats, self._stopping)

    def _abort(self) -> None:
        for task in self._tasks:
            task.cancel()

    def _build_edges(self) -> None:
        for name in self.graph.order:
            node = self.graph.nodes[name]
            if node.is_source:
                continue
            edge = Edge(name, capacity=node.edge.capacity, policy=node.edge.policy, stats=self.stats)
            for _ in node.inputs:
                edge.add_producer()
            self._edges[name] = edge

    async def _start_stages(self, executor: ThreadPoolExecutor) -> None:
        # Sinks first: a publisher is connected before the first frame can reach it.
        for name in reversed(self.graph.order):
            node = self.graph.nodes[name]
            ctx = StageContext(
                pipeline=self.graph.pipeline,
                stage=name,
                base_dir=self._base_dir,
                stats=self.stats,
                executor=executor,
                bus=self._bus,
                input_stages=node.inputs,
                logger=logging.getLogger(f"streamgraph.stage.{name}"),
                stop_stream=self._stop_stream,
            )
            await node.stage.start(ctx)

    async def _stop_stages(self) -> None:
        for name in self.graph.order:
            node = self.graph.nodes[name]
            try:
                await node.stage.stop()
            except Exception:
                log.exception("stage %s failed to stop cleanly", name)

    def _stop_stream(self, stream_id: str, reason: str) -> None:
        for node in self.graph.sources:
            assert isinstance(node.stage, Source)
            node.stage.stop_stream(stream_id, reason)

    async def _run_source(self, node: Node, outputs: list[Edge]) -> None:
        assert isinstance(node.stage, Source)

        open_streams: dict[str, None] = {}  # started and not yet ended, in start order

        async def emit(message: Message) -> None:
            if isinstance(message, StreamStarted):
                self._origins[message.stream_id] = node.name
                open_streams[message.stream_id] = None
            elif isinstance(message, EndOfStream):
                self._origins[message.stream_id] = node.name
                open_streams.pop(message.stream_id, None)
            await self._emit(message, outputs)

        try:
            await node.stage.run(emit)
        except Exception as exc:
            # A broken source ends its own streams with the error; the other sources go on.
            log.error("source %s failed", node.name, exc_info=exc)
            error = f"source {node.name}: {type(exc).__name__}: {exc}"
            for stream_id in list(open_streams):
                counters = self.stats.stream(stream_id)
                counters.error = counters.error or error
                await emit(EndOfStream(stream_id, "error", error))
        finally:
            for edge in outputs:
                edge.producer_done()

    async def _run_stage(self, node: Node, outputs: list[Edge]) -> None:
        edge = self._edges[node.name]
        streams: dict[str, _StreamEntry] = {}
        in_flight: Item | None = None
        try:
            while True:
                try:
                    message = await edge.get()
                except EdgeClosed:
                    break
                if isinstance(message, StreamStarted):
                    await self._start_stream(node, message, self._entry(node, message.stream_id, streams), outputs)
                elif isinstance(message, EndOfStream):
                    await self._end_stream(node, message, streams, outputs)
                elif (entry := streams.get(message.stream_id)) is not None and entry.failed:
                    self.stats.drop_item(message, f"failed:{node.name}")
                else:
                    in_flight = message
                    results = await self._process(node, message, streams, outputs)
                    in_flight = None
                    await self._emit_all(results, outputs)
        except asyncio.CancelledError:
            if in_flight is not None:
                self.stats.drop_item(in_flight, "shutdown")
            raise
        finally:
            for output in outputs:
                output.producer_done()

    def _entry(self, node: Node, stream_id: str, streams: dict[str, _StreamEntry]) -> _StreamEntry:
        entry = streams.get(stream_id)
        if entry is None:
            origin = self._origins.get(stream_id, "")
            entry = streams[stream_id] = _StreamEntry(inputs=self._inputs_from.get((node.name, origin), 1))
        return entry

    async def _start_stream(self, node: Node, started: StreamStarted, entry: _StreamEntry, outputs: list[Edge]) -> None:
        entry.started += 1
        if entry.started > 1:
            return  # announced already, through another of this stage's inputs
        try:
            await node.stage.on_stream_added(started.info)
        except Exception as exc:
            error = _describe_failure(node, started.stream_id, exc)
            await self._emit(started, outputs)
            await self._fail_stream(node, started.stream_id, error, entry, outputs)
            return
        await self._emit(started, outputs)

    async def _process(
        self, node: Node, item: Item, streams: dict[str, _StreamEntry], outputs: list[Edge]
    ) -> Sequence[Item]:
        stage = node.stage
        began = time.perf_counter()
        try:
            results = await stage.process(item)
        except StreamError as exc:
            self.stats.drop_item(item, "stream_error")
            entry = self._entry(node, item.stream_id, streams)
            await self._fail_stream(node, item.stream_id, exc.message, entry, outputs)
            return ()
        except Exception:
            # One bad item never sinks the stream or the process: log it, count it, move on.
            log.exception("stage %s failed on stream %s seq %d", node.name, item.stream_id, item.seq)
            self.stats.drop_item(item, f"error:{node.name}")
            return ()
        self._add_latency(node, results, began)
        return results

    @staticmethod
    def _add_latency(node: Node, items: Sequence[Item], began: float) -> None:
        key = node.stage.latency_key
        if key is not None:
            elapsed_ms = (time.perf_counter() - began) * 1000.0
            for item in items:
                item.add_time(key, elapsed_ms)

    async def _fail_stream(
        self, node: Node, stream_id: str, error: str, entry: _StreamEntry, outputs: list[Edge]
    ) -> None:
        """End one stream now, in this stage and downstream; the others go on.

        The stage still gets ``on_stream_ended`` (to release what it holds for the stream); items
        it hands back then are counted as dropped. Its sources are asked to stop the stream; the
        ends they still send are swallowed here, so downstream sees exactly one end.
        """
        log.error("stream %s failed in stage %s: %s", stream_id, node.name, error)
        entry.failed = True
        counters = self.stats.stream(stream_id)
        counters.error = counters.error or error
        self._stop_stream(stream_id, error)
        eos = EndOfStream(stream_id, "error", error)
        for lost in await self._ended_hook(node, eos):
            self.stats.drop_item(lost, f"failed:{node.name}")
        await self._emit(eos, outputs)

    async def _end_stream(
        self, node: Node, eos: EndOfStream, streams: dict[str, _StreamEntry], outputs: list[Edge]
    ) -> None:
        entry = self._entry(node, eos.stream_id, streams)
        entry.ended += 1
        entry.end = eos if entry.end is None or _SEVERITY[eos.reason] > _SEVERITY[entry.end.reason] else entry.end
        if entry.ended < entry.inputs:
            return  # another of this stage's inputs still carries the stream
        del streams[eos.stream_id]
        if entry.failed:
            return  # its end already went downstream when it failed
        eos = entry.end
        began = time.perf_counter()
        try:
            tail = await node.stage.on_stream_ended(eos)
            self._add_latency(node, tail, began)
        except Exception as exc:
            error = _describe_failure(node, eos.stream_id, exc)
            self.stats.stream(eos.stream_id).error = error
            tail, eos = (), EndOfStream(eos.stream_id, "error", error)
        await self._emit_all(tail, outputs)
        await self._emit(eos, outputs)

    @staticmethod
    async def _ended_hook(node: Node, eos: EndOfStream) -> Sequence[Item]:
        try:
            return await node.stage.on_stream_ended(eos)
        except Exception:
            log.exception("stage %s failed ending stream %s", node.name, eos.stream_id)
            return ()

    async def _emit_all(self, items: Sequence[Item], outputs: list[Edge]) -> None:
        for index, item in enumerate(items):
            try:
                await self._emit(item, outputs)
            except asyncio.CancelledError:
                for lost in items[index:]:
                    self.stats.drop_item(lost, "shutdown")
                raise

    async def _emit(self, message: Message, outputs: list[Edge]) -> None:
        # Every branch's copy is made before any branch can see (and change) the item.
        copies = [message, *(message.fork() for _ in outputs[1:])] if isinstance(message, Item) else None
        for index, edge in enumerate(outputs):
            await edge.put(copies[index] if copies is not None else message)


@dataclass
class _StreamEntry:
    """One stream as one stage sees it: how many of its inputs carry it, and where it stands."""

    inputs: int
    started: int = 0
    ended: int = 0
    failed: bool = False
    end: EndOfStream | None = None
    """The most telling end received so far: an error over a stop over a plain end of file."""


_SEVERITY = {"eof": 0, "stopped": 1, "error": 2}


def _describe_failure(node: Node, stream_id: str, exc: Exception) -> str:
    if isinstance(exc, StreamError):
        return exc.message
    log.error("stage %s failed on stream %s", node.name, stream_id, exc_info=exc)
    return f"stage {node.name}: {type(exc).__name__}: {exc}"


def _inputs_from_sources(graph: Graph) -> dict[tuple[str, str], int]:
    """(stage, source) -> how many of the stage's inputs carry that source's streams.

    A stage behind a diamond gets each stream's start and end once per such input; it starts
    the stream on the first and ends it on the last.
    """
    upstream: dict[str, set[str]] = {}
    for name in graph.order:
        inputs = graph.nodes[name].inputs
        upstream[name] = {name}.union(*(upstream[i] for i in inputs))
    return {
        (name, source.name): sum(1 for i in graph.nodes[name].inputs if source.name in upstream[i])
        for name in graph.order
        for source in graph.sources
    }
