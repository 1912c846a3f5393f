"""Run the real CLI as a subprocess, or a pipeline in this process, while a real NATS subscriber
records what it publishes."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import nats

from pipeline.config import PipelineConfig, parse_config
from pipeline.results import EVENT_SCHEMA, RESULT_SCHEMA
from pipeline.runner import Runner, RunSummary
from pipeline.service import run_pipeline

ROOT = Path(__file__).resolve().parents[2]
RESULT_VALIDATOR = jsonschema.Draft202012Validator(json.loads(RESULT_SCHEMA.read_text()))
EVENT_VALIDATOR = jsonschema.Draft202012Validator(json.loads(EVENT_SCHEMA.read_text()))


@dataclass
class Recording:
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    msg_ids: list[str] = field(default_factory=list)
    returncode: int | None = None
    stdout: str = ""
    stderr: str = ""

    def event_names(self, stream_id: str) -> list[str]:
        return [e["event"] for e in self.events.get(stream_id, [])]


class Recorder:
    """Subscribes to ``<prefix>.<pipeline>.>`` and sorts results and events by stream."""

    def __init__(self, url: str, pipeline: str, prefix: str = "streamgraph") -> None:
        self.url = url
        self.subject = f"{prefix}.{pipeline}.>"
        self.recording = Recording()
        self._ended: dict[str, asyncio.Event] = {}
        self._client: Any = None

    async def __aenter__(self) -> Recorder:
        self._client = await nats.connect(self.url)
        await self._client.subscribe(self.subject, cb=self._on_message)
        await self._client.flush()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.drain()

    def ended(self, stream_id: str) -> asyncio.Event:
        return self._ended.setdefault(stream_id, asyncio.Event())

    async def _on_message(self, msg: Any) -> None:
        body = json.loads(msg.data)
        stream_id = body["stream_id"]
        if msg.subject.endswith(".events"):
            EVENT_VALIDATOR.validate(body)
            self.recording.events.setdefault(stream_id, []).append(body)
            if body["event"] == "ended":
                self.ended(stream_id).set()
        else:
            RESULT_VALIDATOR.validate(body)
            self.recording.results.setdefault(stream_id, []).append(body)
            if msg.headers:
                self.recording.msg_ids.append(msg.headers.get("Nats-Msg-Id", ""))


async def start_cli(*args: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pipeline.cli",
        *args,
        cwd=str(ROOT),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process, recording: Recording, timeout_s: float = 240) -> None:
    """Wait for the CLI (a generous hang guard, not a timing assertion) and keep its output."""
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=timeout_s)
    recording.returncode = process.returncode
    recording.stdout, recording.stderr = stdout.decode(), stderr.decode()


async def run_to_end(
    url: str,
    config: str,
    pipeline: str,
    streams: tuple[str, ...] = ("sample",),
    *,
    env: dict[str, str],
    timeout_s: float = 240,
    args: tuple[str, ...] = (),
) -> Recording:
    """``streamgraph run CONFIG [ARGS]`` against ``url`` until it exits, recording what it
    published until every stream in ``streams`` has sent its ``ended`` event."""
    async with Recorder(url, pipeline) as recorder:
        process = await start_cli("run", config, "--nats-url", url, "--no-progress", *args, env=env)
        await finish(process, recorder.recording, timeout_s=timeout_s)
        for stream_id in streams:
            await asyncio.wait_for(recorder.ended(stream_id).wait(), timeout=30)
    return recorder.recording


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


GUARD_S = 90.0
"""How long a test waits for anything before it calls it a hang (never a timing assertion)."""


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition`` (a hang guard, not a timing assertion)."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), GUARD_S)
    except TimeoutError:
        raise AssertionError(f"no {what} within {GUARD_S:g} s (hang guard)") from None


async def wait_listening(http: aiohttp.ClientSession, base: str) -> None:
    """Until ``base``'s ``/healthz`` answers 200 (a service started as a subprocess is up)."""

    async def listening() -> None:
        while True:
            try:
                async with http.get(f"{base}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)

    await asyncio.wait_for(listening(), GUARD_S)


@dataclass
class Running:
    """A pipeline running in this process: its runner, its API's URL (None without ``api:``),
    and, once the block has ended and the pipeline drained, its summary."""

    runner: Runner
    task: asyncio.Task[RunSummary]
    url: str | None = None
    summary: RunSummary | None = None

    def check_alive(self) -> None:
        assert not self.task.done(), "the pipeline ended early"


@asynccontextmanager
async def running_pipeline(nats_url: str, config: PipelineConfig | dict[str, Any]) -> AsyncIterator[Running]:
    """``run_pipeline`` in this process until the block ends (then it drains and must finish)."""
    if isinstance(config, dict):
        config = parse_config(config, base_dir=ROOT)
    apis: list[Any] = []
    runners: list[Runner] = []
    task = asyncio.create_task(
        run_pipeline(config, nats_url=nats_url, on_api=apis.append, on_started=runners.append, handle_signals=False)
    )
    await until(lambda: bool(runners) or task.done(), "a started pipeline")
    if task.done():
        task.result()  # raises what stopped it
    runner = runners[0]
    await asyncio.wait_for(runner.started.wait(), GUARD_S)
    running = Running(runner, task, apis[0].url if apis else None)
    try:
        yield running
    finally:
        runner.request_stop()
        running.summary = await asyncio.wait_for(task, GUARD_S)


TrackedObjects = dict[int, list[tuple[str, int, list[float]]]]
"""Each frame's objects by seq: (label, track id, box), sorted."""


def objects_by_seq(results: list[dict[str, Any]], stage: str = "objects") -> TrackedObjects:
    return {
        r["seq"]: sorted((o["label"], o["track_id"], o["box"]) for o in r["results"][stage]["objects"]) for r in results
    }


def assert_same_objects(mine: TrackedObjects, theirs: TrackedObjects, *, frames: int, labels: set[str]) -> None:
    """Two runs of a detector + tracker found the same objects with the same tracks in every frame,
    boxes within a pixel, among them ``labels``."""
    assert sorted(mine) == sorted(theirs) and len(mine) == frames
    assert {label for objects in mine.values() for label, _, _ in objects} >= labels
    for seq, objects in mine.items():
        assert [(label, track) for label, track, _ in objects] == [(label, track) for label, track, _ in theirs[seq]]
        for (_, _, a), (_, _, b) in zip(objects, theirs[seq], strict=True):
            assert max(abs(p - q) for p, q in zip(a, b, strict=True)) <= 1.0, f"frame {seq}: {a} vs {b}"
