"""A live camera faster than the graph: frames are dropped (counted), never queued without bound.

A real RTSP server sends 30 fps into a stage that takes 100 ms per frame (10 fps). While the
pipeline runs, every edge's depth is sampled: none may exceed its capacity. The drop counter must
keep rising, and the age of every published frame (now - capture) must stay under a bound set by
the queue in front of the slow stage, not grow with the length of the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.config import parse_config
from pipeline.media import Item
from pipeline.stage import Stage

from .support import Recorder, running_pipeline

SLOW_S = 0.1
CAPACITY = 4
FRAMES = 60
"""Published frames to watch: 6 s of the slow stage, 180 frames from the camera."""
GUARD_S = 120
AGE_BOUND_S = (CAPACITY + 2) * SLOW_S + 2.0
"""What waits in front of the slow stage (capacity, the one in it, one in decode) times its
pace, plus 2 s of slack for a loaded machine. Without drops the age would grow by 2/3 s per
second: past this bound within about 4 s of the run."""


class SlowStage(Stage):
    """A model that manages 10 frames per second."""

    async def process(self, item: Item) -> Sequence[Item]:
        await asyncio.sleep(SLOW_S)
        return (item,)


def _config(url: str) -> Any:
    return parse_config(
        {
            "pipeline": "backpressure",
            "stages": [
                {"name": "camera", "type": "rtsp", "params": {"url": url, "id": "cam", "stall_timeout_s": 10}},
                {
                    "name": "decode",
                    "type": "decode",
                    "inputs": ["camera"],
                    "edge": {"capacity": 32, "policy": "drop_oldest"},
                },
                {
                    "name": "slow",
                    "class": f"{__name__}:SlowStage",
                    "inputs": ["decode"],
                    "edge": {"capacity": CAPACITY, "policy": "drop_oldest"},
                },
                {"name": "publish", "type": "publish", "inputs": ["slow"]},
            ],
        },
        base_dir=Path("."),
    )


async def test_a_slow_stage_drops_frames_and_keeps_their_age_bounded(nats_server: Any, camera_30fps: Any) -> None:
    depths: dict[str, int] = {}
    drops_seen: list[int] = []
    async with (
        Recorder(nats_server.url, "backpressure") as recorder,
        running_pipeline(nats_server.url, _config(camera_30fps.url)) as running,
    ):
        results = recorder.recording.results
        runner = running.runner

        async def watch() -> None:
            while len(results.get("cam", [])) < FRAMES:
                running.check_alive()
                for name, edge in runner.edges.items():
                    depths[name] = max(depths.get(name, 0), edge.depth)
                if len(results.get("cam", [])) in (FRAMES // 2, FRAMES - 1):
                    drops_seen.append(runner.stats.stream("cam").drops.get("edge:slow", 0))
                await asyncio.sleep(0.005)

        await asyncio.wait_for(watch(), GUARD_S)

    for name, edge in runner.edges.items():
        assert depths[name] <= edge.capacity, f"edge {name}: depth {depths[name]} > capacity {edge.capacity}"
    assert depths["slow"] == CAPACITY, "the slow stage's queue never filled: the test proves nothing"
    assert drops_seen[0] > 0 and drops_seen[-1] > drops_seen[0], f"drops did not keep rising: {drops_seen}"
    ages = [m["latency_ms"]["total"] / 1000.0 for m in results["cam"]]
    assert max(ages) < AGE_BOUND_S, f"frame age reached {max(ages):.2f} s (bound {AGE_BOUND_S:.2f} s)"
    seqs = [m["seq"] for m in results["cam"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert seqs[-1] - seqs[0] > len(seqs), "no gaps in seq: nothing was dropped between decode and publish"
