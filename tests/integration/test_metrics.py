"""``GET /metrics`` of a real pipeline run in-process (streams source, decode, publish, a real
nats-server), fetched over real HTTP with the bearer token and parsed as Prometheus text."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from pipeline.config import parse_config

from .support import Recorder, running_pipeline

PIPELINE = "metrics-it"
TOKEN = "metrics-secret"
Samples = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    wanted = {"pipeline": PIPELINE, **labels}
    found = [v for have, v in samples.get(name, []) if have == wanted]
    assert len(found) == 1, f"{name}{wanted}: {samples.get(name)}"
    return found[0]


async def test_metrics_of_a_running_pipeline(nats_server: Any, sample_video: Path, tmp_path: Path) -> None:
    config = parse_config(
        {
            "pipeline": PIPELINE,
            "api": {"listen": "127.0.0.1:0", "token": TOKEN},
            "stages": [
                {
                    "name": "src",
                    "type": "streams",
                    "params": {
                        "streams": [
                            {"id": "clip", "uri": str(sample_video)},
                            {"id": "live", "uri": str(sample_video), "options": {"rate": "native", "loop": True}},
                        ]
                    },
                },
                {"name": "decode", "type": "decode", "inputs": ["src"], "edge": {"capacity": 4}},
                {"name": "publish", "type": "publish", "inputs": ["decode"]},
            ],
        },
        base_dir=tmp_path,
    )
    async with (
        Recorder(nats_server.url, PIPELINE) as recorder,
        running_pipeline(nats_server.url, config) as running,
    ):
        await asyncio.wait_for(recorder.ended("clip").wait(), timeout=120)  # hang guard only
        while not recorder.recording.results.get("live"):
            running.check_alive()
            await asyncio.sleep(0.05)
        url = f"{running.url}/metrics"
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=")
                samples = parse(await response.text())
            async with session.get(url) as response:
                assert response.status == 401
            async with session.get(url, headers={"Authorization": "Bearer wrong"}) as response:
                assert response.status == 401
        clip_received = len(recorder.recording.results["clip"])
    summary = running.summary
    assert summary is not None

    # The finished stream: what NATS received, and what the stats say, as scraped.
    assert clip_received > 0
    assert value(samples, "streamgraph_frames_published_total", stream="clip") == clip_received
    clip = summary.stats.stream("clip")
    assert value(samples, "streamgraph_frames_decoded_total", stream="clip") == clip.decoded
    assert not [s for s in samples.get("streamgraph_frames_dropped_total", []) if s[0]["stream"] == "clip"]
    assert value(samples, "streamgraph_stream_reconnects_total", stream="clip") == 0
    assert value(samples, "streamgraph_frames_consumed_total", stream="clip") == 0
    assert value(samples, "streamgraph_stream_fps", stream="clip") >= 0

    # The looping stream still runs; the clip has ended.
    assert value(samples, "streamgraph_streams_running") == 1
    assert value(samples, "streamgraph_frames_published_total", stream="live") > 0
    assert value(samples, "streamgraph_stream_fps", stream="live") > 0  # published a moment ago

    for edge in ("decode", "publish"):
        depth = value(samples, "streamgraph_edge_depth", edge=edge)
        capacity = value(samples, "streamgraph_edge_capacity", edge=edge)
        assert 0 <= depth <= capacity
        assert value(samples, "streamgraph_edge_depth_max", edge=edge) <= capacity
        assert value(samples, "streamgraph_edge_dropped_total", edge=edge) == 0
    assert value(samples, "streamgraph_edge_capacity", edge="decode") == 4

    published = sum(v for labels, v in samples["streamgraph_frames_published_total"] if labels["pipeline"] == PIPELINE)
    assert value(samples, "streamgraph_latency_seconds_count") == published
    assert value(samples, "streamgraph_latency_seconds_sum") > 0
    for stage in ("decode", "queue", "publish"):
        assert value(samples, "streamgraph_stage_latency_seconds_count", stage=stage) > 0
    assert "streamgraph_batch_size_count" not in samples  # no infer stage, no batches
