"""`loop: true` keeps timestamps and seq increasing across restarts; `streamgraph subscribe` prints messages."""

from __future__ import annotations

import asyncio
import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import nats

from .support import Recorder, finish, start_cli


async def test_looping_file_keeps_pts_and_seq_increasing(
    nats_server: Any, sample_video: Path, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    config = tmp_path / "loop.yaml"
    config.write_text(
        f"""
pipeline: loop-demo
stages:
  - {{name: video, type: file, params: {{path: '{sample_video}', id: looped, loop: true}}}}
  - {{name: decode, type: decode, inputs: [video]}}
  - {{name: publish, type: publish, inputs: [decode]}}
"""
    )
    async with Recorder(nats_server.url, "loop-demo") as recorder:
        process = await start_cli("run", str(config), "--nats-url", nats_server.url, "--no-progress", env=cli_env)
        while len(recorder.recording.results.get("looped", [])) < 600:  # well into the third pass
            assert process.returncode is None, "a looping source must not end by itself"
            await asyncio.sleep(0.05)
        process.send_signal(2)
        await finish(process, recorder.recording, timeout_s=60)
        await asyncio.wait_for(recorder.ended("looped").wait(), timeout=30)
    results = recorder.recording.results["looped"]
    assert [r["seq"] for r in results] == list(range(len(results)))
    pts = [r["pts"] for r in results]
    assert all(b > a for a, b in pairwise(pts)), "pts must keep increasing across loops"
    # 25 fps: the third pass starts exactly where the second ended, at 20 s of media time.
    assert abs(results[500]["media_time_s"] - 20.0) < 1e-6


async def test_subscribe_prints_each_message_with_its_subject(nats_server: Any, cli_env: dict[str, str]) -> None:
    process = await start_cli("subscribe", "demo.>", "--nats-url", nats_server.url, "--count", "2", env=cli_env)
    assert process.stderr is not None
    line = b""
    while b"subscribed to" not in line:  # printed once the server has the subscription
        line = await asyncio.wait_for(process.stderr.readline(), timeout=60)
        assert line, "subscribe exited before it listened"
    client = await nats.connect(nats_server.url)
    try:
        await client.publish("demo.one", json.dumps({"seq": 1}).encode())
        await client.publish("demo.two", b"not json")
        await client.flush()
    finally:
        await client.close()
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0
    assert stdout.decode().splitlines() == ['demo.one {"seq":1}', "demo.two not json"]
