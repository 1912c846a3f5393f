"""`loop: true` keeps timestamps and seq increasing across restarts; `streamgraph subscribe` prints messages."""

from __future__ import annotations

import asyncio
import contextlib
import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import nats

from pipeline.bus import NatsServer

from .support import GUARD_S, Recorder, finish, start_cli


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


async def _until_subscribed(process: asyncio.subprocess.Process) -> None:
    assert process.stderr is not None
    line = b""
    while b"subscribed to" not in line:  # printed once the server has the subscription
        line = await asyncio.wait_for(process.stderr.readline(), timeout=60)
        assert line, "subscribe exited before it listened"


async def test_subscribe_gives_up_on_a_server_gone_for_longer_than_reconnect_s(cli_env: dict[str, str]) -> None:
    """It used to wait forever: now it reconnects for ``--reconnect-s``, then exits 1 naming the server."""
    server = NatsServer().start()
    try:
        process = await start_cli("subscribe", "x.>", "--nats-url", server.url, "--reconnect-s", "2", env=cli_env)
        await _until_subscribed(process)
    finally:
        server.stop()
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)  # a hang guard
    assert process.returncode == 1
    lines = stderr.decode().splitlines()
    assert any(f"lost the NATS server at {server.url}; reconnecting for up to 2 s" in line for line in lines)
    assert lines[-1] == f"error: lost the NATS server at {server.url} and could not reconnect within 2 s"
    assert "Traceback" not in stderr.decode()


async def test_subscribe_resumes_when_the_server_comes_back_within_reconnect_s(cli_env: dict[str, str]) -> None:
    server = NatsServer().start()
    try:
        process = await start_cli("subscribe", "x.>", "--nats-url", server.url, "--count", "1", env=cli_env)
        await _until_subscribed(process)
    finally:
        server.stop()
    with NatsServer(port=server.port) as again:  # a restart: same address, new process
        client = await nats.connect(again.url)

        async def publish_until_taken() -> None:
            # Messages sent before the subscription is back are lost (core NATS): send until one is taken.
            while process.returncode is None:
                await client.publish("x.back", b'{"after": "restart"}')
                await client.flush()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(process.wait(), timeout=0.2)

        try:
            await asyncio.wait_for(publish_until_taken(), GUARD_S)
        finally:
            await client.close()
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().splitlines() == ['x.back {"after":"restart"}']
    assert "reconnected to the NATS server at" in stderr.decode()
