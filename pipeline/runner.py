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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .control import StreamControl, StreamHost, StreamOperations
from .edges import Edge
from .errors import ConfigError
from .graph import Graph, Node
from .media import EndOfStream, Item, Message, StreamStarted
from .metrics import Metrics
from .sinks import Sinks
from .sourcerun import run_source
from .stage import Source, StageContext
from .stagerun import StageRun, fan_out
from .stats import StreamStats
from .threadpool import WatchedPool

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
        sinks: Sinks | None = None,
        threads: int = 4,
        drain_timeout_s: float = 3.0,
        stall_s: float = 10.0,
        media_roots: Sequence[Path] = (),
    ) -> None:
        self.graph = graph
        self.stats = StreamStats()
        self.metrics = Metrics(
            graph.pipeline,
            stats=self.stats,
            edges=lambda: self._edges,
            outbox=lambda: self._bus.outbox if self._bus is not None else None,
            sinks=lambda: self._sinks,
            pool=lambda: self._pool,
        )
        """What ``GET /metrics`` serves: this runner's own registry, never the process-wide one."""
        self._base_dir = base_dir
        self._bus = bus
        self._sinks = sinks if sinks is not None else Sinks()
        self._threads = threads
        self._drain_timeout_s = drain_timeout_s
        self._stall_s = stall_s
        self._media_roots = tuple(root.resolve() for root in (base_dir, *media_roots))
        self._pool: WatchedPool | None = None
        self._edges: dict[str, Edge] = {}
        self._inputs_from = _inputs_from_sources(graph)
        self._origins: dict[str, str] = {}
        """stream id -> the source that produces it."""
        self._open_streams: set[str] = set()
        """Streams a source started and has not ended yet."""
        self._tasks: list[asyncio.Task[None]] = []
        self._stage_runs: list[StageRun] = []
        self._stopping = False
        self._drain_timer: asyncio.TimerHandle | None = None
        self.started = asyncio.Event()
        self._control: StreamOperations | None = None

    @property
    def edges(self) -> dict[str, Edge]:
        return dict(self._edges)

    @property
    def local_control(self) -> StreamControl:
        """Add, remove and list streams of the graph's ``streams`` sources while it runs."""
        hosts = {n.name: n.stage for n in self.graph.sources if isinstance(n.stage, StreamHost)}
        return StreamControl(hosts, open_streams=lambda: self._open_streams)

    @property
    def control(self) -> StreamOperations:
        """What the HTTP API and NATS control act on: ``local_control``, or a cluster's
        operations on the catalog every worker shares (``use_control``)."""
        return self._control if self._control is not None else self.local_control

    def use_control(self, control: StreamOperations) -> None:
        self._control = control

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
        executor = self._pool = WatchedPool(self._threads)
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
            for run in self._stage_runs:  # in graph order: publishers say the streams ended
                await run.end_abandoned_streams()
            await self._stop_stages()
            executor.shutdown(wait=False, cancel_futures=True)
        return RunSummary(self.graph.pipeline, time.monotonic() - started_at, self.stats, self._stopping)

    def not_ready(self) -> dict[str, str]:
        """Stages that cannot do their work now, with why (a model's server is down), and
        ``runtime.threads`` when the shared thread pool is stalled."""
        reasons = {name: node.stage.not_ready() for name, node in self.graph.nodes.items()}
        if self._pool is not None:
            reasons["runtime.threads"] = self._pool.stalled(self._stall_s)
        return {name: reason for name, reason in reasons.items() if reason is not None}

    def _abort(self) -> None:
        for task in self._tasks:
            task.cancel()

    def _build_edges(self) -> None:
        for name in self.graph.order:
            node = self.graph.nodes[name]
            if node.is_source:
                continue
            edge = Edge(
                name,
                capacity=node.edge.capacity,
                policy=node.edge.policy,
                stats=self.stats,
                drop_reason=f"backpressure:{name}" if node.stage.sink else None,
            )
            for _ in node.inputs:
                edge.add_producer()
            self._edges[name] = edge

    async def _start_stages(self, executor: WatchedPool) -> None:
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
                sinks=self._sinks,
                input_stages=node.inputs,
                consumers=tuple(self.graph.nodes[c].stage for c in self.graph.consumers(name)),
                latency_keys=self.graph.latency_keys,
                logger=logging.getLogger(f"streamgraph.stage.{name}"),
                stop_stream=self._stop_stream,
                metrics=self.metrics,
                media_roots=self._media_roots,
            )
            try:
                await node.stage.start(ctx)
            except ConfigError as exc:  # found only on start (a model's server): name the stage
                where = f"stages[{list(self.graph.nodes).index(name)}]"
                raise ConfigError(f"{where}.{exc.path}" if exc.path else where, exc.message) from None

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

        async def emit(message: Message) -> None:
            if not isinstance(message, Item):
                self._origins[message.stream_id] = node.name
            if isinstance(message, StreamStarted):
                self._open_streams.add(message.stream_id)
            elif isinstance(message, EndOfStream):
                self._open_streams.discard(message.stream_id)
            await fan_out(message, outputs, via=node.name)

        try:
            await run_source(node.stage, emit, self.stats, node.name)
        finally:
            for edge in outputs:
                edge.producer_done()

    async def _run_stage(self, node: Node, outputs: list[Edge]) -> None:
        def inputs_carrying(stream_id: str) -> int:
            return self._inputs_from.get((node.name, self._origins.get(stream_id, "")), 1)

        run = StageRun(
            node,
            self._edges[node.name],
            outputs,
            stats=self.stats,
            inputs_carrying=inputs_carrying,
            stop_stream=self._stop_stream,
        )
        self._stage_runs.append(run)
        try:
            await run.run()
        finally:
            for output in outputs:
                output.producer_done()


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
