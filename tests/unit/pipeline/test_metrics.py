"""pipeline.metrics: series read from hand-built stats and edges, observed latencies and batches,
fps over a window, and per-runner registries; checked by parsing the exposition text. And the
server's ``GET /metrics`` route (pipeline.server.metrics) that serves them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from pipeline.edges import Edge
from pipeline.metrics import Metrics
from pipeline.server.metrics import add_routes
from pipeline.stats import StreamStats
from tests.fakes import FakeClock

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(metrics: Metrics) -> Samples:
    return parse(metrics.render().decode())


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset({"pipeline": "p", **labels}.items()))


def value(samples: Samples, name: str, **labels: str) -> float:
    assert key(name, **labels) in samples, f"no sample {name}{labels}; have {sorted(n for n, _ in samples)}"
    return samples[key(name, **labels)]


def hand_built_stats() -> StreamStats:
    stats = StreamStats()
    a = stats.stream("a")
    a.decoded, a.published, a.consumed, a.packets_dropped, a.reconnects = 10, 6, 1, 2, 3
    stats.count_drop("a", "edge:infer", 2)
    stats.count_drop("a", "shutdown")
    b = stats.stream("b")
    b.decoded, b.published, b.ended = 4, 3, True
    stats.count_drop("b", "edge:infer")
    return stats


def test_stream_counters_come_from_stats_at_scrape_time():
    stats = hand_built_stats()
    metrics = Metrics("p", stats=stats)
    samples = scrape(metrics)
    assert value(samples, "streamgraph_frames_decoded_total", stream="a") == 10
    assert value(samples, "streamgraph_frames_published_total", stream="a") == 6
    assert value(samples, "streamgraph_frames_consumed_total", stream="a") == 1
    assert value(samples, "streamgraph_packets_dropped_total", stream="a") == 2
    assert value(samples, "streamgraph_stream_reconnects_total", stream="a") == 3
    assert value(samples, "streamgraph_frames_dropped_total", stream="a", reason="edge:infer") == 2
    assert value(samples, "streamgraph_frames_dropped_total", stream="a", reason="shutdown") == 1
    assert value(samples, "streamgraph_frames_decoded_total", stream="b") == 4
    assert value(samples, "streamgraph_streams_running") == 1  # b has ended

    stats.stream("a").published += 2  # read again on the next scrape, not cached
    assert value(scrape(metrics), "streamgraph_frames_published_total", stream="a") == 8


def test_edges_report_depth_capacity_and_their_drops():
    stats = hand_built_stats()
    infer = Edge("infer", capacity=4, policy="drop_oldest", stats=stats)
    infer._data_count = 3
    infer.max_depth = 4
    publish = Edge("publish", capacity=8, policy="block", stats=stats)
    samples = scrape(Metrics("p", stats=stats, edges=lambda: {"infer": infer, "publish": publish}))
    assert value(samples, "streamgraph_edge_depth", edge="infer") == 3
    assert value(samples, "streamgraph_edge_depth_max", edge="infer") == 4
    assert value(samples, "streamgraph_edge_capacity", edge="infer") == 4
    assert value(samples, "streamgraph_edge_dropped_total", edge="infer") == 3  # 2 of a + 1 of b
    assert value(samples, "streamgraph_edge_depth", edge="publish") == 0
    assert value(samples, "streamgraph_edge_capacity", edge="publish") == 8
    assert value(samples, "streamgraph_edge_dropped_total", edge="publish") == 0


def test_published_latency_observes_the_parts_the_item_went_through():
    metrics = Metrics("p")
    timings = {"decode": 2.0, "queue": 20.0}
    latency = {"decode": 2.0, "queue": 20.0, "prepare": 0.0, "infer": 0.0, "publish": 0.5, "total": 61.0}
    metrics.observe_published("a", latency, timings)
    metrics.observe_published("a", latency, timings)
    samples = scrape(metrics)
    assert value(samples, "streamgraph_stage_latency_seconds_count", stage="decode") == 2
    assert value(samples, "streamgraph_stage_latency_seconds_sum", stage="queue") == pytest.approx(0.040)
    assert value(samples, "streamgraph_stage_latency_seconds_count", stage="publish") == 2
    assert key("streamgraph_stage_latency_seconds_count", stage="infer") not in samples  # not measured
    assert value(samples, "streamgraph_latency_seconds_count") == 2
    assert value(samples, "streamgraph_latency_seconds_sum") == pytest.approx(0.122)
    assert value(samples, "streamgraph_latency_seconds_bucket", le="0.1") == 2
    assert value(samples, "streamgraph_latency_seconds_bucket", le="0.05") == 0


def test_batches_fill_size_and_inference_time_histograms():
    metrics = Metrics("p")
    metrics.observe_batch("det", "pp-ocrv4-det", 4, 0.030)
    metrics.observe_batch("det", "pp-ocrv4-det", 1, 0.010)
    samples = scrape(metrics)
    labels = {"stage": "det", "model": "pp-ocrv4-det"}
    assert value(samples, "streamgraph_batch_size_count", **labels) == 2
    assert value(samples, "streamgraph_batch_size_sum", **labels) == 5
    assert value(samples, "streamgraph_batch_size_bucket", le="2.0", **labels) == 1
    assert value(samples, "streamgraph_inference_seconds_count", **labels) == 2
    assert value(samples, "streamgraph_inference_seconds_sum", **labels) == pytest.approx(0.040)


def test_fps_counts_a_recent_window_and_falls_to_zero():
    stats = StreamStats()
    stats.stream("a")
    clock = FakeClock()
    metrics = Metrics("p", stats=stats, fps_window_s=5.0, clock=clock)
    assert value(scrape(metrics), "streamgraph_stream_fps", stream="a") == 0
    for _ in range(40):  # 4 frames/s for 10 s: at 100.0, 100.25, ... 109.75
        metrics.observe_published("a", {}, ())
        clock.now += 0.25
    assert value(scrape(metrics), "streamgraph_stream_fps", stream="a") == pytest.approx(19 / 5.0)  # after 105.0
    clock.now = 114.5  # only the frame at 109.75 is left in the window
    assert metrics.fps("a") == pytest.approx(1 / 5.0)
    clock.now = 120.0
    assert value(scrape(metrics), "streamgraph_stream_fps", stream="a") == 0


def test_fps_of_a_young_stream_is_divided_by_its_age():
    clock = FakeClock()
    metrics = Metrics("p", fps_window_s=5.0, clock=clock)
    metrics.observe_published("a", {}, ())
    assert metrics.fps("a") == 1.0  # divided by at least 1 s
    for _ in range(63):  # 16 frames/s for about 4 s
        clock.now += 0.0625
        metrics.observe_published("a", {}, ())
    assert metrics.fps("a") == pytest.approx(16.0, rel=0.02)
    for _ in range(96):  # 6 s more: the window is full
        clock.now += 0.0625
        metrics.observe_published("a", {}, ())
    assert metrics.fps("a") == pytest.approx(16.0)


def test_what_fps_remembers_stays_bounded_without_scrapes():
    clock = FakeClock()
    metrics = Metrics("p", fps_window_s=5.0, clock=clock)
    for _ in range(100_000):  # 25 frames/s for 4000 s, nobody scraping
        metrics.observe_published("a", {}, ())
        clock.now += 0.04
    assert len(metrics._published_at["a"]) <= 5.0 / 0.04 + 1  # one window, not the whole run
    assert metrics.fps("a") == pytest.approx(25.0)


def test_each_metrics_has_its_own_registry():
    first, second = Metrics("p"), Metrics("p")  # two runners of one pipeline in one process
    first.observe_batch("det", "m", 2, 0.01)
    assert value(scrape(first), "streamgraph_batch_size_count", stage="det", model="m") == 1
    assert key("streamgraph_batch_size_count", stage="det", model="m") not in scrape(second)
    labels = {"pipeline": "p", "stage": "det", "model": "m"}
    assert REGISTRY.get_sample_value("streamgraph_batch_size_count", labels) is None  # not the global one


async def test_route_serves_the_text_format():
    metrics = Metrics("p", stats=hand_built_stats())
    app = web.Application()
    runner: Any = SimpleNamespace(metrics=metrics)
    add_routes(app, runner)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        samples = parse(await response.text())
    assert value(samples, "streamgraph_frames_decoded_total", stream="a") == 10
