"""A stream never gets more than its fair share of decode time (issue 15).

One pipeline runs in this process (a ``streams`` source, one ``decode`` behind a live
``drop_oldest`` edge, ``prepare``, ``publish``; a real nats-server) with two streams: a flooder, a
raw H.264 elementary stream (no container, no timestamps) looped at ``rate: max``, and a healthy
stream, the sample looped at native rate. The decode edge serves the streams round-robin and,
when full, drops only the flooder's packets (it holds the most): the healthy stream publishes
every frame, with no drop and no gap longer than the issue's 2 s, however hard the other floods.
Waits are hang guards; the only timing assertion is that generous 2 s bound.
"""

from __future__ import annotations

import itertools
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from pipeline.config import parse_config

from .support import Recorder, running_pipeline, until

PIPELINE = "fair-share"
HEALTHY = "healthy"
FLOOD = "flood"
HEALTHY_FRAMES = 100
"""Healthy results to wait for: 4 s of the sample at its 25 fps, looped as needed."""
MAX_GAP_S = 2.0
DECODE_EDGE = {"capacity": 32, "policy": "drop_oldest"}
"""As configs/live.yaml has it."""


class TimedRecorder(Recorder):
    """Also notes when each result reached the subscriber, per stream."""

    def __init__(self, url: str, pipeline: str) -> None:
        super().__init__(url, pipeline)
        self.arrivals: dict[str, list[float]] = {}

    async def _on_message(self, msg: Any) -> None:
        if not msg.subject.endswith(".events"):
            self.arrivals.setdefault(msg.subject.rsplit(".", 1)[-1], []).append(time.monotonic())
        await super()._on_message(msg)


def raw_h264(sample: Path, path: Path, frames: int = 60) -> Path:
    """The sample's first ``frames`` pictures, re-encoded as a raw H.264 elementary stream (a
    keyframe every 10, so the flooder resumes soon after each drop)."""
    with av.open(str(sample)) as source, av.open(str(path), "w", format="h264") as out:
        video = source.streams.video[0]
        stream = out.add_stream("libx264", rate=25)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = video.codec_context.width, video.codec_context.height
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 25)
        stream.options = {"preset": "ultrafast", "bf": "0", "g": "10"}
        for index, picture in enumerate(itertools.islice(source.decode(video), frames)):
            picture = picture.reformat(format="yuv420p")
            picture.pts, picture.time_base = index, Fraction(1, 25)
            out.mux(stream.encode(picture))
        out.mux(stream.encode(None))
    return path


def _config(healthy: Path, flood: Path, base_dir: Path) -> Any:
    return parse_config(
        {
            "pipeline": PIPELINE,
            "stages": [
                {
                    "name": "cameras",
                    "type": "streams",
                    "params": {
                        "streams": [
                            {"id": FLOOD, "uri": str(flood), "options": {"rate": "max", "loop": True}},
                            {"id": HEALTHY, "uri": str(healthy), "options": {"rate": "native", "loop": True}},
                        ]
                    },
                },
                {"name": "decode", "type": "decode", "inputs": ["cameras"], "edge": DECODE_EDGE},
                {"name": "prep", "type": "prepare", "inputs": ["decode"], "params": {"model": "pp-ocrv4-det"}},
                {"name": "publish", "type": "publish", "inputs": ["prep"]},
            ],
        },
        base_dir=base_dir,
    )


async def test_a_flooding_raw_h264_stream_takes_no_share_of_a_healthy_streams_decode(
    nats_server: Any, sample_video: Path, tmp_path: Path
) -> None:
    flood = raw_h264(sample_video, tmp_path / "flood.h264")
    async with (
        TimedRecorder(nats_server.url, PIPELINE) as recorder,
        running_pipeline(nats_server.url, _config(sample_video, flood, tmp_path)) as running,
    ):
        results = recorder.recording.results
        await until(lambda: len(results.get(HEALTHY, [])) >= HEALTHY_FRAMES, f"{HEALTHY_FRAMES} healthy results")
        running.check_alive()
        # Counted while both still run (a stop counts what is still in the edges as ``shutdown``).
        stats = running.runner.stats
        healthy_counters, flood_counters = stats.stream(HEALTHY), stats.stream(FLOOD)
        healthy_drops = (dict(healthy_counters.drops), healthy_counters.packets_dropped)
        flood_drops = (dict(flood_counters.drops), flood_counters.packets_dropped)
        all_drops = stats.drops_by_reason()
        edge = running.runner.edges["decode"]
        flood_depth, decode_peak = edge.stream_depth(FLOOD), edge.max_depth

    healthy = results[HEALTHY]
    assert [m["seq"] for m in healthy] == list(range(len(healthy))), "the healthy stream has a seq gap"
    assert all(m["drops"]["total"] == 0 for m in healthy), [m["drops"] for m in healthy if m["drops"]["total"]]
    assert healthy_drops == ({}, 0), f"the healthy stream lost items: {healthy_drops}"
    # Whatever was dropped was the flooder's own: every counted drop is its.
    assert all_drops == flood_drops[0], (all_drops, flood_drops)
    assert set(flood_drops[0]) <= {"edge:decode"}, flood_drops
    gaps = [b - a for a, b in itertools.pairwise(recorder.arrivals[HEALTHY])]
    assert max(gaps) < MAX_GAP_S, f"the healthy stream paused {max(gaps):.2f} s"
    # The flooder was served too (its fair share), and it did flood.
    assert results.get(FLOOD), "no results for the flooding stream"
    print(
        f"healthy {len(healthy)} results, largest gap {max(gaps):.3f} s; flooder {len(results[FLOOD])} results,"
        f" {flood_drops[1]} packets dropped; decode edge peak {decode_peak}, flooder's share then {flood_depth}"
    )
