"""The pipeline's counters, gauges and histograms, rendered in Prometheus text format.

Each runner owns a ``Metrics`` with its own ``CollectorRegistry`` (never the process-wide one),
so two pipelines in one process never collide. Two kinds of series live in it:

* read at scrape time from what the runtime counts anyway (``StreamStats``, the edges): frames
  decoded, published, dropped (by reason) and consumed per stream, reconnects, streams running,
  queue depth and capacity and drops per edge, and each stream's published frames per second;
* observed as things happen: per-stage latency and total latency of every published result
  (``observe_published``, called by ``publish``), batch sizes and model run times
  (``observe_batch``, called by ``infer``).

Every series is named ``streamgraph_*`` and carries a ``pipeline`` label. The HTTP route that
serves them (``GET /metrics``) is the server's (``pipeline.server.metrics``).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import sourcethread
from .edges import Edge
from .outbox import Outbox
from .sinks import Sinks
from .stats import StreamStats
from .threadpool import WatchedPool

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
FPS_WINDOW_S = 5.0
"""``streamgraph_stream_fps`` counts the frames published in this many recent seconds."""

EdgesView = Callable[[], Mapping[str, Edge]]
_Family = CounterMetricFamily | GaugeMetricFamily


class Metrics:
    """One pipeline's metrics: a private registry, the histograms stages feed, and a collector
    that reads ``stats`` and ``edges`` when scraped. ``observe_*`` may be called from any thread
    (histograms lock); ``observe_published`` and scrapes run on the event loop."""

    def __init__(
        self,
        pipeline: str,
        *,
        stats: StreamStats | None = None,
        edges: EdgesView | None = None,
        outbox: Callable[[], Outbox | None] = lambda: None,
        sinks: Callable[[], Sinks | None] = lambda: None,
        pool: Callable[[], WatchedPool | None] = lambda: None,
        fps_window_s: float = FPS_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pipeline = pipeline
        self.stats = stats if stats is not None else StreamStats()
        self._edges: EdgesView = edges if edges is not None else dict
        self._outbox = outbox
        self._sinks = sinks
        self._pool = pool
        self._fps_window_s = fps_window_s
        self._clock = clock
        self._published_at: dict[str, deque[float]] = {}
        self._first_published: dict[str, float] = {}
        self.registry = CollectorRegistry()
        self.stage_latency = self._histogram(
            "streamgraph_stage_latency_seconds",
            "Time a published result spent in each part of the pipeline (a key of its latency_ms)",
            ["stage"],
        )
        self.total_latency = self._histogram(
            "streamgraph_latency_seconds", "Capture to publish of each published result (its latency_ms.total)", []
        )
        self.batch_size = self._histogram(
            "streamgraph_batch_size", "Items per model run", ["stage", "model"], buckets=BATCH_SIZE_BUCKETS
        )
        self.inference_time = self._histogram(
            "streamgraph_inference_seconds", "Duration of one model run (one batch)", ["stage", "model"]
        )
        self.streams_failed = Counter(
            "streamgraph_streams_failed",
            "Streams of a 'streams' source that ended with an error (each stays listed in /streams a while)",
            ["pipeline", "source"],
            registry=self.registry,
        )
        self.registry.register(_RuntimeCollector(self))

    def _histogram(
        self, name: str, documentation: str, labels: list[str], *, buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    ) -> Histogram:
        return Histogram(name, documentation, ["pipeline", *labels], buckets=buckets, registry=self.registry)

    def observe_batch(self, stage: str, model: str, size: int, seconds: float) -> None:
        """One model run of ``size`` items that took ``seconds`` (the model alone, not the wait)."""
        self.batch_size.labels(self.pipeline, stage, model).observe(size)
        self.inference_time.labels(self.pipeline, stage, model).observe(seconds)

    def count_stream_failed(self, source: str) -> None:
        """A stream of the ``streams`` source ``source`` ended with an error."""
        self.streams_failed.labels(self.pipeline, source).inc()

    def observe_published(self, stream_id: str, latency_ms: Mapping[str, float], parts: Collection[str]) -> None:
        """A result of ``stream_id`` was published with this ``latency_ms`` breakdown (the
        message's own).

        Only the ``parts`` the item went through are observed (``publish`` always), so a pipeline
        without an ``infer`` stage shows no ``infer`` latency rather than a pile of zeros.
        """
        for key, ms in latency_ms.items():
            if key == "total":
                self.total_latency.labels(self.pipeline).observe(ms / 1000.0)
            elif key in parts or key == "publish":
                self.stage_latency.labels(self.pipeline, key).observe(ms / 1000.0)
        now = self._clock()
        self._first_published.setdefault(stream_id, now)
        times = self._published_at.setdefault(stream_id, deque())
        times.append(now)
        # Trimmed here too, not only when scraped: nobody may ever scrape, and memory stays bounded.
        while times[0] <= now - self._fps_window_s:
            times.popleft()

    def fps(self, stream_id: str) -> float:
        """Frames of ``stream_id`` published in the last ``fps_window_s`` seconds, divided by that
        window, or by the time since the stream's first publish (at least 1 s) while shorter."""
        times = self._published_at.get(stream_id)
        if not times:
            return 0.0
        now = self._clock()
        while times and times[0] <= now - self._fps_window_s:
            times.popleft()
        if not times:
            del self._published_at[stream_id]
            del self._first_published[stream_id]
            return 0.0
        span = min(self._fps_window_s, max(1.0, now - self._first_published[stream_id]))
        return len(times) / span

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RuntimeCollector(Collector):
    """Reads the runtime's own counters at scrape time, so nothing is counted twice."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        pipeline = metrics.pipeline
        streams = metrics.stats.items()
        per_stream: list[tuple[str, str, Callable[[str, str, list[str]], _Family]]] = [
            ("streamgraph_frames_decoded", "Frames (video frames, audio windows) decoded", _counter),
            ("streamgraph_frames_published", "Results published to NATS", _counter),
            ("streamgraph_frames_consumed", "Decoded items a stage used up on purpose (not lost)", _counter),
            ("streamgraph_packets_dropped", "Compressed packets discarded before decoding", _counter),
            ("streamgraph_stream_reconnects", "Times a live source connected again", _counter),
            ("streamgraph_stream_fps", f"Frames published per second over the last {FPS_WINDOW_S:g} s", _gauge),
        ]
        families = [make(name, doc, ["pipeline", "stream"]) for name, doc, make in per_stream]
        dropped = _counter(
            "streamgraph_frames_dropped", "Decoded frames dropped, by where", ["pipeline", "stream", "reason"]
        )
        edge_drops: dict[str, int] = {}
        running = 0
        for stream_id, counters in streams:
            values = (
                counters.decoded,
                counters.published,
                counters.consumed,
                counters.packets_dropped,
                counters.reconnects,
                metrics.fps(stream_id),
            )
            for family, value in zip(families, values, strict=True):
                family.add_metric([pipeline, stream_id], value)
            for reason, count in sorted(counters.drops.items()):
                dropped.add_metric([pipeline, stream_id, reason], count)
                where, _, edge = reason.partition(":")
                if where in ("edge", "backpressure"):  # both are a full edge's drops
                    edge_drops[edge] = edge_drops.get(edge, 0) + count
            running += not counters.ended
        yield from families
        yield dropped
        streams_running = _gauge(
            "streamgraph_streams_running", "Streams seen and not yet ended at the publisher", ["pipeline"]
        )
        streams_running.add_metric([pipeline], running)
        yield streams_running
        yield from _edge_families(pipeline, metrics._edges(), edge_drops)
        outbox = metrics._outbox()
        if outbox is not None:
            yield from _outbox_families(pipeline, outbox)
        yield from _sink_families(pipeline, metrics._sinks())
        yield from _thread_families(pipeline, metrics._pool())


def _edge_families(pipeline: str, edges: Mapping[str, Edge], drops: Mapping[str, int]) -> Iterator[Metric]:
    labels = ["pipeline", "edge"]
    depth = _gauge("streamgraph_edge_depth", "Data items waiting in the queue in front of a stage", labels)
    peak = _gauge("streamgraph_edge_depth_max", "Most data items ever waiting in the queue", labels)
    capacity = _gauge("streamgraph_edge_capacity", "Data items the queue holds at most", labels)
    dropped = _counter("streamgraph_edge_dropped", "Frames a full drop_oldest queue discarded", labels)
    for name, edge in sorted(edges.items()):
        depth.add_metric([pipeline, name], edge.depth)
        peak.add_metric([pipeline, name], edge.max_depth)
        capacity.add_metric([pipeline, name], edge.capacity)
        dropped.add_metric([pipeline, name], drops.get(name, 0))
    yield from (depth, peak, capacity, dropped)


def _outbox_families(pipeline: str, outbox: Outbox) -> Iterator[Metric]:
    labels = ["pipeline"]
    waiting = _gauge("streamgraph_outbox_messages", "Results and events not yet sent (JetStream: acknowledged)", labels)
    size = _gauge("streamgraph_outbox_bytes", "Bytes of the messages in the outbox", labels)
    retries = _counter("streamgraph_publish_retries", "Messages sent again, unacknowledged (JetStream)", labels)
    for family, value in ((waiting, outbox.depth), (size, outbox.depth_bytes), (retries, outbox.retries)):
        family.add_metric([pipeline], value)
        yield family


def _sink_families(pipeline: str, sinks: Sinks | None) -> Iterator[Metric]:
    if not sinks:
        return
    labels = ["pipeline", "sink"]
    waiting = _gauge("streamgraph_sink_pending", "Messages waiting in a sink's outbox", labels)
    sent = _counter("streamgraph_sink_sent", "Messages a sink delivered", labels)
    dropped = _counter("streamgraph_sink_dropped", "Messages a sink dropped, by reason", [*labels, "reason"])
    down = _gauge("streamgraph_sink_up", "1 while a sink delivers, 0 while it is down and retrying", labels)
    for sink in sinks:
        waiting.add_metric([pipeline, sink.name], sink.pending)
        sent.add_metric([pipeline, sink.name], sink.sent)
        down.add_metric([pipeline, sink.name], 0 if sink.down_since is not None else 1)
        for reason, count in sorted(sink.dropped.items()):
            dropped.add_metric([pipeline, sink.name, reason], count)
    yield from (waiting, sent, dropped, down)


def _thread_families(pipeline: str, pool: WatchedPool | None) -> Iterator[Metric]:
    labels = ["pipeline"]
    if pool is not None:
        busy = _gauge("streamgraph_thread_pool_busy", "Threads of the shared pool running a call now", labels)
        busy.add_metric([pipeline], pool.busy)
        size = _gauge("streamgraph_thread_pool_size", "Threads in the shared pool (runtime.threads)", labels)
        size.add_metric([pipeline], pool.size)
        yield from (busy, size)
    # Process-wide: a source thread belongs to no registry, and the counts are small.
    abandoned = _counter(
        "streamgraph_source_threads_abandoned", "Source threads abandoned in a call that did not return in time", labels
    )
    abandoned.add_metric([pipeline], sourcethread.abandoned_total())
    stuck = _gauge("streamgraph_source_threads_stuck", "Abandoned source threads still blocked now", labels)
    stuck.add_metric([pipeline], sourcethread.stuck_now())
    yield from (abandoned, stuck)


def _counter(name: str, documentation: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, labels=labels)


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=labels)
