"""Sinks besides NATS, end to end through the real CLI: ``--print`` on stdout, a ``jsonl`` file, a
real Mosquitto broker (``mqtt``) and a real aiohttp server (``webhook``), all at once on the
object pipeline; then the broker and the webhook down for part of a run: each counts its drops
and recovers, while NATS and the file get every message."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml
from aiohttp import web

from pipeline.bus import free_port
from samples.photos import object_samples
from tests.mosquitto import Mosquitto

from .support import EVENT_VALIDATOR, RESULT_VALIDATOR, ROOT, Recorder, finish, start_cli

SECRET = "s3cret"
FRAMES = 40  # the person video: 4 s at 10 frames/s


@dataclass
class Webhook:
    """A real HTTP receiver: checks each POST's signature, keeps its messages; answers 500 while ``failing``."""

    port: int = field(default_factory=free_port)
    posts: list[list[dict[str, Any]]] = field(default_factory=list)
    bad_signatures: int = 0
    refused: int = 0
    failing: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Streamgraph-Signature", ""), expected):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.failing:
            self.refused += 1
            return web.Response(status=500, text="down for maintenance")
        self.posts.append(json.loads(body))
        return web.Response(status=204)

    def messages(self) -> list[dict[str, Any]]:
        return [message for post in self.posts for message in post]


@contextlib.asynccontextmanager
async def serving(hook: Webhook) -> AsyncIterator[Webhook]:
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", hook.port).start()
    try:
        yield hook
    finally:
        await runner.cleanup()


class MqttRecorder:
    """A real MQTT client subscribed to ``<prefix>/#``: every message by topic, in order."""

    def __init__(self, url_port: int, prefix: str) -> None:
        self.port = url_port
        self.prefix = prefix
        self.messages: list[tuple[str, bytes, bool]] = []
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def __aenter__(self) -> MqttRecorder:
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self.subscribed.wait(), timeout=30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _listen(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port) as client:
            await client.subscribe(f"{self.prefix}/#", qos=1)
            self.subscribed.set()
            async for message in client.messages:
                payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                self.messages.append((str(message.topic), payload, bool(message.retain)))

    def on(self, topic: str) -> list[bytes]:
        return [payload for t, payload, _ in self.messages if t == f"{self.prefix}/{topic}"]


async def retained(port: int, topic: str) -> bytes:
    """What the broker keeps on a topic, as a client that subscribes now gets it."""
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(10):
            async for message in client.messages:
                assert message.retain
                return message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
    raise AssertionError("unreachable")


def config_with_sinks(folder: Path, sinks: list[dict[str, Any]], rate: str = "max") -> str:
    config = yaml.safe_load((ROOT / "configs" / "objects.yaml").read_text())
    config["sinks"] = sinks
    for stage in config["stages"]:
        if stage["type"] == "file":
            stage["params"].update(path=str(object_samples()["person"]), id="person", rate=rate)
    path = folder / "objects-sinks.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.timeout(300)
async def test_print_jsonl_mqtt_and_webhook_get_the_same_messages(
    nats_server: Any, cli_env: dict[str, str], tmp_path: Path
) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        sinks = [
            {"type": "jsonl", "path": str(tmp_path / "out.jsonl")},
            {"type": "mqtt", "url": broker.url, "prefix": "sg", "qos": 1},
            {"type": "webhook", "url": "", "secret": SECRET, "max_batch": 8, "batch_delay_ms": 200},
        ]
        async with serving(Webhook()) as hook, MqttRecorder(broker.port, "sg") as mqtt:
            sinks[2]["url"] = hook.url
            config = config_with_sinks(tmp_path, sinks)
            async with Recorder(nats_server.url, "objects") as recorder:
                process = await start_cli(
                    "run", config, "--nats-url", nats_server.url, "--no-progress", "--print", env=cli_env
                )
                await finish(process, recorder.recording, timeout_s=240)
            await asyncio.sleep(0.5)  # the last MQTT messages on their way to our subscriber
        status = await retained(broker.port, "sg/person/status")
        available = await retained(broker.port, "sg/available")
    finally:
        broker.stop()
    recording = recorder.recording
    assert recording.returncode == 0, recording.stderr[-3000:]

    # --print: stdout is the results, one per line, nothing else.
    printed = [json.loads(line) for line in recording.stdout.splitlines()]
    for message in printed:
        RESULT_VALIDATOR.validate(message)
    assert [m["seq"] for m in printed] == list(range(FRAMES))
    assert "objects done: 1 stream(s)" in recording.stderr  # the summary went to stderr
    nats_results = recording.results["person"]
    assert [m["seq"] for m in nats_results] == list(range(FRAMES))
    assert printed == nats_results  # the same bytes' worth: one message, every sink

    # jsonl file: the results and the events, in order.
    lines = jsonl(tmp_path / "out.jsonl")
    results = [m for m in lines if "seq" in m]
    events = [m for m in lines if "event" in m]
    assert results == nats_results
    for event in events:
        EVENT_VALIDATOR.validate(event)
    names = [e["event"] for e in events]
    assert names[0] == "started" and names[-1] == "ended" and "object_entered" in names

    # MQTT: results per stream, every event, retained status, per-label counts, availability.
    assert [json.loads(p)["seq"] for p in mqtt.on("person/results")] == list(range(FRAMES))
    mqtt_events = [json.loads(p) for p in mqtt.on("events")]
    assert [e["event"] for e in mqtt_events] == names
    entered = {e["label"] for e in mqtt_events if e["event"] == "object_entered"}
    assert entered >= {"person", "dog", "horse"}
    assert mqtt.on("person/person")[0] == b"1" and mqtt.on("person/dog")[0] == b"1"
    assert mqtt.on("person/status")[-1] == b"ended" and status == b"ended"
    assert available == b"offline"  # said on a clean close

    # Webhook: signed, batched, everything in order.
    assert hook.bad_signatures == 0
    assert max(len(post) for post in hook.posts) > 1
    assert hook.messages() == lines


@pytest.mark.timeout(300)
async def test_a_sink_that_is_down_counts_its_drops_and_recovers_without_touching_the_others(
    nats_server: Any, cli_env: dict[str, str], tmp_path: Path
) -> None:
    broker = Mosquitto(tmp_path)  # its port chosen, not started: the broker is down at first
    hook = Webhook(failing=True)
    sinks = [
        {"type": "jsonl", "path": str(tmp_path / "out.jsonl")},
        {"type": "mqtt", "url": broker.url, "prefix": "sg", "max_pending": 4},
        {"type": "webhook", "url": hook.url, "secret": SECRET, "max_pending": 4, "max_batch": 2, "batch_delay_ms": 0},
    ]
    config = config_with_sinks(tmp_path, sinks, rate="native")
    try:
        async with serving(hook), Recorder(nats_server.url, "objects") as recorder:
            process = await start_cli("run", config, "--nats-url", nats_server.url, "--no-progress", env=cli_env)
            # A quarter of the way through, both come back.
            async with asyncio.timeout(120):
                while len(recorder.recording.results.get("person", [])) < FRAMES // 4:
                    await asyncio.sleep(0.05)
            broker.start()
            hook.failing = False
            async with MqttRecorder(broker.port, "sg") as mqtt:
                await finish(process, recorder.recording, timeout_s=240)
                await asyncio.sleep(0.5)
    finally:
        broker.stop()
    recording = recorder.recording
    assert recording.returncode == 0, recording.stderr[-3000:]
    # NATS and the file lost nothing.
    assert [m["seq"] for m in recording.results["person"]] == list(range(FRAMES))
    assert [m["seq"] for m in jsonl(tmp_path / "out.jsonl") if "seq" in m] == list(range(FRAMES))
    # Both sinks were down, dropped the oldest of what waited, said so, and delivered again.
    assert "sink mqtt is down" in recording.stderr and "sink webhook is down" in recording.stderr
    assert hook.refused >= 1
    for name in ("mqtt", "webhook"):
        line = next(line for line in recording.stderr.splitlines() if f"sink {name}: " in line and "sent" in line)
        assert "dropped (full: " in line, line
    assert json.loads(mqtt.on("person/results")[-1])["seq"] == FRAMES - 1
    assert [m["seq"] for m in hook.messages() if "seq" in m][-1] == FRAMES - 1
