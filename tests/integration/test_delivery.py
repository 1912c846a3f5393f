"""Delivery through NATS outages: a real nats-server (JetStream file store) SIGKILLed mid-run and
started again on the same port and store.

JetStream: every frame's result is stored exactly once, nothing is counted as an error, and the
run's summary and ``/metrics`` agree with what the stream holds. A full outbox is backpressure:
a file source waits, a live one drops frames counted as ``backpressure:publish``; nothing produced
is lost. Core NATS: what is lost while the bus is down is counted (``bus_down``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import nats
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.bus import NatsServer, free_port
from pipeline.config import parse_config
from pipeline.runner import Runner, RunSummary
from pipeline.service import run_pipeline

from .support import GUARD_S, until

FPS = 10


def write_video(path: Path, seconds: float) -> int:
    """A small H.264 file of ``seconds`` at 10 fps; returns its frame count."""
    frames = int(seconds * FPS)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = Fraction(1, FPS)
        for index in range(frames):
            image = np.full((48, 64, 3), (index * 7) % 255, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return frames


@pytest.fixture()
def restartable_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A JetStream nats-server whose store outlives a kill: ``kill()`` then ``start()`` again."""
    server = NatsServer(jetstream=True, port=free_port(), store_dir=tmp_path / "jetstream")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pipeline_config(video: Path, nats: dict[str, Any], *, stream_id: str = "cam", live: bool = False) -> Any:
    decode: dict[str, Any] = {"name": "decode", "type": "decode", "inputs": ["video"]}
    publish: dict[str, Any] = {"name": "publish", "type": "publish", "inputs": ["decode"]}
    if live:  # what a camera gets: a slow consumer costs frames, never latency
        decode["edge"] = publish["edge"] = {"capacity": 4, "policy": "drop_oldest"}
    return parse_config(
        {
            "pipeline": "outage",
            "nats": nats,
            "stages": [
                {"name": "video", "type": "file", "params": {"path": str(video), "id": stream_id, "rate": "native"}},
                decode,
                publish,
            ],
        },
        base_dir=video.parent,
    )


async def start_run(server: NatsServer, config: Any, *, published: int) -> tuple[Runner, asyncio.Task[RunSummary]]:
    """Start ``config`` against ``server``; return once ``published`` results are."""
    runners: list[Runner] = []
    task = asyncio.create_task(
        run_pipeline(config, nats_url=server.url, on_started=runners.append, handle_signals=False)
    )
    await until(lambda: bool(runners) or task.done(), "a started pipeline")
    if task.done():
        task.result()  # raises what stopped it
    runner = runners[0]
    await until(lambda: runner.stats.published >= published or task.done(), f"{published} published results")
    assert not task.done(), "the run ended too early"
    return runner, task


async def run_through_outage(
    server: NatsServer, config: Any, *, outage_s: float, kill_after: int
) -> tuple[RunSummary, Runner]:
    """Run ``config`` to its end; once ``kill_after`` results are published, SIGKILL the server
    and start it again ``outage_s`` later (same port, same store)."""
    runner, task = await start_run(server, config, published=kill_after)
    await asyncio.to_thread(server.kill)
    await asyncio.sleep(outage_s)  # the outage itself, not a timing assertion
    await asyncio.to_thread(server.start)
    summary = await asyncio.wait_for(task, GUARD_S + outage_s)
    return summary, runner


async def stored_messages(url: str, stream: str) -> list[tuple[str, dict[str, Any]]]:
    """Every message the JetStream stream holds: (Nats-Msg-Id, body), in stream order."""
    client = await nats.connect(url)
    try:
        js = client.jetstream()
        count = (await js.stream_info(stream)).state.messages
        stored = []
        for seq in range(1, count + 1):
            message = await js.get_msg(stream, seq=seq)
            assert message.headers is not None and message.data is not None
            stored.append((message.headers["Nats-Msg-Id"], json.loads(message.data)))
        return stored
    finally:
        await client.close()


def metric(runner: Runner, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(runner.metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.mark.parametrize("outage_s", [2, 10, 30])
async def test_jetstream_outage_stores_every_result_exactly_once(
    restartable_server: NatsServer, tmp_path: Path, outage_s: int
) -> None:
    # The file plays at its own rate for a few seconds past the outage: frames keep coming while
    # the server is down, and after it is back.
    frames = write_video(tmp_path / "clip.mp4", outage_s + 5)
    config = pipeline_config(tmp_path / "clip.mp4", {"jetstream": {"stream": "OUTAGE"}})
    summary, runner = await run_through_outage(restartable_server, config, outage_s=outage_s, kill_after=10)

    stored = await stored_messages(restartable_server.url, "OUTAGE")
    results = [body for _, body in stored if "seq" in body]
    events = [body for _, body in stored if "event" in body]
    assert sorted(r["seq"] for r in results) == list(range(frames)), "each frame's result stored exactly once"
    assert len({msg_id for msg_id, _ in stored}) == len(stored)
    assert [e["event"] for e in events] == ["started", "ended"]
    assert events[-1]["frames"] == {"decoded": frames, "published": frames, "dropped": 0}

    counters = summary.stats.stream("cam")
    assert (counters.decoded, counters.published, counters.drops) == (frames, frames, {})
    assert metric(runner, "streamgraph_frames_published_total", stream="cam") == frames
    assert metric(runner, "streamgraph_frames_dropped_total") == 0
    assert metric(runner, "streamgraph_outbox_messages") == 0
    if outage_s > 5:  # longer than the ack timeout: what the outage cut off was sent again
        assert metric(runner, "streamgraph_publish_retries_total") > 0


async def test_a_full_outbox_makes_a_file_source_wait_and_loses_nothing(
    restartable_server: NatsServer, tmp_path: Path
) -> None:
    frames = write_video(tmp_path / "clip.mp4", 6)
    nats_config = {"jetstream": {"stream": "FULL", "ack_timeout_s": 1}, "outbox": {"max_messages": 5}}
    config = pipeline_config(tmp_path / "clip.mp4", nats_config)
    summary, _ = await run_through_outage(restartable_server, config, outage_s=3, kill_after=5)

    stored = await stored_messages(restartable_server.url, "FULL")
    assert sorted(body["seq"] for _, body in stored if "seq" in body) == list(range(frames))
    counters = summary.stats.stream("cam")
    assert (counters.decoded, counters.published, counters.dropped) == (frames, frames, 0)


async def test_a_full_outbox_makes_a_live_source_drop_frames_as_backpressure(
    restartable_server: NatsServer, tmp_path: Path
) -> None:
    frames = write_video(tmp_path / "clip.mp4", 8)
    nats_config = {"jetstream": {"stream": "LIVE", "ack_timeout_s": 1}, "outbox": {"max_messages": 5}}
    config = pipeline_config(tmp_path / "clip.mp4", nats_config, live=True)
    summary, runner = await run_through_outage(restartable_server, config, outage_s=3, kill_after=5)

    counters = summary.stats.stream("cam")
    # Frames that came while the outbox was full were dropped in front of publish, and counted.
    assert counters.drops.get("backpressure:publish", 0) > 0
    assert not [reason for reason in counters.drops if reason.startswith("error:")]
    assert counters.decoded == counters.published + counters.dropped
    # Every result that was produced is stored, once.
    stored = [body["seq"] for _, body in await stored_messages(restartable_server.url, "LIVE") if "seq" in body]
    assert len(stored) == len(set(stored)) == counters.published
    assert (
        metric(runner, "streamgraph_frames_dropped_total", reason="backpressure:publish")
        == counters.drops["backpressure:publish"]
    )
    assert frames > counters.published


async def test_core_nats_counts_what_it_loses_while_the_bus_is_down(
    restartable_server: NatsServer, tmp_path: Path
) -> None:
    frames = write_video(tmp_path / "clip.mp4", 7)
    config = pipeline_config(tmp_path / "clip.mp4", {"outbox": {"max_messages": 3}})
    received: list[dict[str, Any]] = []

    async def keep(msg: Any) -> None:
        received.append(json.loads(msg.data))

    async def subscribe() -> Any:
        client = await nats.connect(restartable_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        await client.subscribe("streamgraph.outage.cam", cb=keep)
        await client.flush()
        return client

    client = await subscribe()
    try:
        summary, runner = await run_through_outage(restartable_server, config, outage_s=3, kill_after=5)
        await until(lambda: bool(received) and received[-1]["seq"] == frames - 1, "the last result")
    finally:
        await client.close()

    counters = summary.stats.stream("cam")
    lost = counters.drops.get("bus_down", 0)
    assert lost > 0, "3 s at 10 fps overflows a 3-message outbox"
    assert counters.decoded == frames == counters.published + counters.dropped
    assert metric(runner, "streamgraph_frames_dropped_total", reason="bus_down") == lost
    # The next results say so themselves.
    assert received[-1]["drops"]["by_reason"]["bus_down"] == lost
    # At most once: nothing arrives twice, and what arrives was counted as published.
    seqs = [message["seq"] for message in received]
    assert len(seqs) == len(set(seqs)) and len(seqs) <= counters.published


async def test_stop_with_the_bus_gone_abandons_the_outbox_after_its_flush_timeout(
    restartable_server: NatsServer, tmp_path: Path
) -> None:
    write_video(tmp_path / "clip.mp4", 30)
    nats_config = {"jetstream": {"stream": "GONE", "ack_timeout_s": 1}, "outbox": {"flush_timeout_s": 1}}
    config = pipeline_config(tmp_path / "clip.mp4", nats_config)
    runner, task = await start_run(restartable_server, config, published=5)
    await asyncio.to_thread(restartable_server.kill)  # and it never comes back
    await until(lambda: runner.stats.decoded >= runner.stats.published + 5, "results waiting for the bus")
    runner.request_stop()
    summary = await asyncio.wait_for(task, GUARD_S)

    counters = summary.stats.stream("cam")
    abandoned = counters.drops.get("error:publish:drain_timeout", 0)
    assert abandoned >= 5
    assert counters.decoded == counters.published + counters.dropped


async def test_retry_for_s_gives_up_on_a_message_with_that_reason(
    restartable_server: NatsServer, tmp_path: Path
) -> None:
    write_video(tmp_path / "clip.mp4", 30)
    nats_config = {"jetstream": {"stream": "DEADLINE", "ack_timeout_s": 0.5, "retry_for_s": 1}}
    config = pipeline_config(tmp_path / "clip.mp4", nats_config)
    runner, task = await start_run(restartable_server, config, published=5)
    await asyncio.to_thread(restartable_server.kill)
    given_up = runner.stats.stream("cam").drops
    await until(lambda: given_up.get("error:publish:deadline", 0) >= 3, "results given up on")
    runner.request_stop()
    summary = await asyncio.wait_for(task, GUARD_S)
    counters = summary.stats.stream("cam")
    assert counters.decoded == counters.published + counters.dropped


async def test_a_stream_run_again_is_stored_again_not_taken_for_duplicates(
    restartable_server: NatsServer, tmp_path: Path
) -> None:
    # A service restarted within JetStream's duplicate window plays the same file again: its
    # results must not share ids with the first run's (they would be dropped as duplicates).
    frames = write_video(tmp_path / "clip.mp4", 1)
    config = pipeline_config(tmp_path / "clip.mp4", {"jetstream": {"stream": "AGAIN"}})
    for _ in range(2):
        await asyncio.wait_for(run_pipeline(config, nats_url=restartable_server.url, handle_signals=False), GUARD_S)

    stored = await stored_messages(restartable_server.url, "AGAIN")
    results = [body for _, body in stored if "seq" in body]
    runs = sorted({body["run"] for body in results})
    assert len(runs) == 2 and len(results) == 2 * frames
    for run in runs:
        assert sorted(body["seq"] for body in results if body["run"] == run) == list(range(frames))
