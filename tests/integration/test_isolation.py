"""One stuck stream never hurts the others (issue 15), against the real CLI: named pipes that
never open, or open and then never deliver, next to a healthy stream; a stuck stream removed; and
Ctrl-C while a stream is stuck in its open.

Named pipes block the way a hung network mount or a silent server does, and are real kernel
objects: a FIFO with no writer blocks ``open``; one whose writer sent a little and went quiet
blocks ``read``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import av
import nats
import pytest

from pipeline.bus import free_port
from pipeline.config import parse_config
from pipeline.control import StreamSpec
from pipeline.media import Item
from pipeline.runner import Runner
from pipeline.server import ApiServer, build_app
from pipeline.service import build
from pipeline.stage import Stage

from .support import GUARD_S, Recorder, finish, start_cli, until, wait_listening

PIPELINE = "isolation"
HEALTHY = "healthy"
MAX_GAP_S = 2.0
"""The issue's bound on the healthy stream's gaps while others are stuck."""
SHUTDOWN_GUARD_S = 40.0
"""Hang guard for a Ctrl-C: drain_timeout_s (3) + the outbox flush (20) + start-up slack."""


def service_config(folder: Path, port: int, sample_video: Path) -> Path:
    config = folder / "service.yaml"
    config.write_text(
        f"""
pipeline: {PIPELINE}
api: {{listen: '127.0.0.1:{port}', media_roots: ['{sample_video.parent}']}}
runtime: {{threads: 4}}
stages:
  - name: cams
    type: streams
    params:
      streams:
        - {{id: {HEALTHY}, uri: '{sample_video}', options: {{rate: native, loop: true}}}}
  - {{name: decode, type: decode, inputs: [cams]}}
  - {{name: publish, type: publish, inputs: [decode]}}
"""
    )
    return config


def mpegts_prefix(sample_video: Path, to: Path, packets: int = 40) -> bytes:
    """The first ``packets`` video packets of the sample as MPEG-TS: enough to open and read a
    little, then nothing (a writer that went quiet)."""
    with av.open(str(sample_video)) as source, av.open(str(to), "w", format="mpegts") as out:
        video = source.streams.video[0]
        stream = out.add_stream_from_template(video)
        for index, packet in enumerate(source.demux(video)):
            if index >= packets or not packet.size:
                break
            packet.stream = stream
            out.mux(packet)
    return to.read_bytes()


class QuietWriter:
    """Opens a FIFO for writing (once its reader has), writes ``data``, then stays open and silent."""

    def __init__(self, fifo: Path, data: bytes) -> None:
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._write, args=(fifo, data), daemon=True)
        self._thread.start()

    def _write(self, fifo: Path, data: bytes) -> None:
        with open(fifo, "wb") as pipe:  # blocks until the stream opens it for reading
            pipe.write(data)
            pipe.flush()
            self._release.wait()

    def close(self) -> None:
        self._release.set()


@pytest.fixture
def fifos(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "pipes"
    folder.mkdir()
    yield folder
    # A reader still blocked in open (an abandoned thread of a finished service is gone with its
    # process): nothing to release here.


def make_fifo(folder: Path, name: str) -> Path:
    path = folder / name
    os.mkfifo(path)
    return path


class Api:
    def __init__(self, http: aiohttp.ClientSession, port: int) -> None:
        self.http = http
        self.base = f"http://127.0.0.1:{port}"

    async def wait_listening(self) -> None:
        await wait_listening(self.http, self.base)

    async def add(self, stream_id: str, uri: Path | str, **options: Any) -> int:
        if isinstance(uri, Path):
            options = {"rate": "native", **options}
        body = {"id": stream_id, "uri": str(uri), "options": options}
        async with self.http.post(f"{self.base}/streams", json=body) as response:
            return response.status

    async def streams(self) -> dict[str, dict[str, Any]]:
        async with self.http.get(f"{self.base}/streams") as response:
            return {s["id"]: s for s in (await response.json())["streams"]}

    async def ready(self) -> tuple[int, dict[str, Any]]:
        async with self.http.get(f"{self.base}/readyz") as response:
            return response.status, await response.json()

    async def metric(self, name: str) -> float:
        async with self.http.get(f"{self.base}/metrics") as response:
            text = await response.text()
        match = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
        assert match is not None, f"{name} not in /metrics"
        return float(match.group(1))


class SilentServer:
    """A TCP server that accepts every connection and never says a word: a camera whose RTSP
    server hangs."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._held: list[asyncio.StreamWriter] = []
        self.connections = 0

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"rtsp://127.0.0.1:{port}/cam"

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._held.append(writer)

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._held:
            writer.close()
        assert self._server is not None
        self._server.close()


class Arrivals:
    """When each healthy result arrived here (monotonic), from a subscription of its own."""

    def __init__(self) -> None:
        self.times: list[float] = []

    async def on_message(self, msg: Any) -> None:
        self.times.append(time.monotonic())

    def largest_gap(self, start: float, end: float) -> float:
        inside = [t for t in self.times if start <= t <= end]
        assert inside, "no healthy result at all while the others were stuck"
        marks = [start, *inside, end]
        return max(b - a for a, b in itertools.pairwise(marks))


async def test_stuck_sources_never_stall_a_healthy_stream(
    nats_server: Any, tmp_path: Path, sample_video: Path, fifos: Path, cli_env: dict[str, str]
) -> None:
    """The issue's case: as many never-opening pipes as ``runtime.threads``, one that opens and
    goes quiet, and as many cameras whose server accepts TCP and never answers. The healthy stream
    keeps publishing; each stuck file stream fails within its timeout with the reason, its id free
    again; the silent cameras keep trying on their own threads; readiness stays true (nothing
    shared is stalled)."""
    port = free_port()
    config = service_config(tmp_path, port, sample_video)
    quiet = make_fifo(fifos, "quiet.ts")
    writer = QuietWriter(quiet, mpegts_prefix(sample_video, tmp_path / "prefix.ts"))
    arrivals = Arrivals()
    watcher = await nats.connect(nats_server.url)
    await watcher.subscribe(f"streamgraph.{PIPELINE}.{HEALTHY}", cb=arrivals.on_message)
    silent = SilentServer()
    try:
        async with (
            Recorder(nats_server.url, PIPELINE) as recorder,
            aiohttp.ClientSession() as http,
            silent as silent_url,
        ):
            process = await start_cli("run", str(config), "--nats-url", nats_server.url, "--no-progress", env=cli_env)
            api = Api(http, port)
            await api.wait_listening()
            await until(lambda: len(arrivals.times) >= 5, "healthy results")
            stuck_from = time.monotonic()
            blocked = [f"fifo{n}" for n in range(4)]
            for stream_id in blocked:
                assert await api.add(stream_id, make_fifo(fifos, stream_id), open_timeout_s=4) == 201
            assert await api.add("quiet", quiet, read_timeout_s=4) == 201
            cameras = [f"silent{n}" for n in range(4)]
            for stream_id in cameras:
                assert await api.add(stream_id, silent_url, open_timeout_s=2, max_reconnects=None) == 201

            status, body = await api.ready()
            assert status == 200, body  # stuck sources hold threads of their own, not the pipeline's

            for stream_id in [*blocked, "quiet"]:
                await asyncio.wait_for(recorder.ended(stream_id).wait(), GUARD_S)
            stuck_until = time.monotonic()
            await until(lambda: arrivals.times[-1] > stuck_until, "a healthy result after the stuck streams ended")

            events = recorder.recording.events
            for stream_id in blocked:
                # Never opened: never started; it fails alone, saying why.
                assert [e["event"] for e in events[stream_id]] == ["error", "ended"], events[stream_id]
                error = events[stream_id][0]["message"]
                assert str(fifos / stream_id) in error and "named pipe" in error, error
                assert "no answer after 4." in error and "its thread is abandoned" in error, error
            assert [e["event"] for e in events["quiet"]] == ["started", "error", "ended"], events["quiet"]
            quiet_error = events["quiet"][1]["message"]
            assert "a read: no answer after 4." in quiet_error, quiet_error
            assert recorder.recording.results.get("quiet"), "the quiet pipe's first packets were decoded"

            listed = await api.streams()
            assert {listed[s]["state"] for s in [*blocked, "quiet"]} == {"failed"}, listed
            assert listed[HEALTHY]["state"] == "running"
            assert {listed[s]["state"] for s in cameras} == {"running"}, listed  # still trying
            assert silent.connections >= len(cameras)
            assert [e["event"] for e in events["silent0"]][:1] == ["connecting"], events["silent0"]
            assert await api.metric("streamgraph_source_threads_abandoned_total") >= 5
            assert await api.add("fifo0", make_fifo(fifos, "again"), open_timeout_s=60) == 201  # its id is free
            assert (await api.streams())["fifo0"]["state"] == "running"

            largest = arrivals.largest_gap(stuck_from, stuck_until)
            assert largest < MAX_GAP_S, f"the healthy stream paused {largest:.2f} s while others were stuck"

            process.send_signal(signal.SIGINT)
            await finish(process, recorder.recording, timeout_s=SHUTDOWN_GUARD_S)
        recording = recorder.recording
        assert recording.returncode == 0, recording.stderr
        assert "Traceback" not in recording.stderr
        # Stuck in its open at Ctrl-C: reported, not waited for.
        assert re.search(
            r"stream fifo0 \(added at run time\) failed: .*still blocked past the stop's grace", recording.stderr
        )
    finally:
        writer.close()
        await watcher.drain()


async def test_a_stuck_stream_removed_fails_with_the_reason_and_frees_its_id(
    nats_server: Any, tmp_path: Path, sample_video: Path, fifos: Path, cli_env: dict[str, str]
) -> None:
    port = free_port()
    config = service_config(tmp_path, port, sample_video)
    async with Recorder(nats_server.url, PIPELINE) as recorder, aiohttp.ClientSession() as http:
        process = await start_cli("run", str(config), "--nats-url", nats_server.url, "--no-progress", env=cli_env)
        api = Api(http, port)
        await api.wait_listening()
        assert await api.add("stuck", make_fifo(fifos, "stuck"), open_timeout_s=600) == 201
        assert (await api.streams())["stuck"]["state"] == "running"
        async with http.delete(f"{api.base}/streams/stuck") as response:
            assert response.status == 200, await response.text()
        await asyncio.wait_for(recorder.ended("stuck").wait(), GUARD_S)
        listed = await api.streams()
        assert listed["stuck"]["state"] == "failed", listed
        assert "still blocked past the stop's grace" in listed["stuck"]["error"]
        assert await api.add("stuck", sample_video) == 201  # the id is free for a real source
        await until(lambda: bool(recorder.recording.results.get("stuck")), "results of the re-added stream")
        process.send_signal(signal.SIGINT)
        await finish(process, recorder.recording, timeout_s=SHUTDOWN_GUARD_S)
    assert recorder.recording.returncode == 0, recorder.recording.stderr


GATE = threading.Event()
"""Holds ``Hog``'s calls until the test lets them go."""


class Hog(Stage):
    """A user's stage whose blocking work never finishes (until the test says): it holds every
    thread of the shared pool, the stall ``/readyz`` must report."""

    async def process(self, item: Item) -> Sequence[Item]:
        await self.ctx.run_blocking(GATE.wait)
        return (item,)


async def test_readiness_reports_a_stalled_thread_pool(sample_video: Path) -> None:
    config = parse_config(
        {
            "pipeline": "stalled",
            "runtime": {"threads": 1, "stall_s": 0.5},
            "stages": [
                {"name": "src", "type": "streams", "params": {"streams": []}},
                {"name": "decode", "type": "decode", "inputs": ["src"]},
                {"name": "hog", "class": f"{__name__}:Hog", "inputs": ["decode"]},
                {"name": "sink", "class": "tests.fakes:CountingSink", "inputs": ["hog"]},
            ],
        },
        base_dir=sample_video.parent,
    )
    runner = Runner(build(config), base_dir=sample_video.parent, threads=1, stall_s=0.5)
    task = asyncio.create_task(runner.run())
    server = ApiServer(build_app(runner), "127.0.0.1", 0)
    await server.start()
    GATE.clear()
    try:
        await asyncio.wait_for(runner.started.wait(), GUARD_S)
        async with aiohttp.ClientSession() as http:
            ready = Api(http, 0)
            ready.base = server.url
            # No bus here, so never quite ready: what counts is the stall's own entry.
            assert "not_ready" not in (await ready.ready())[1]
            await runner.control.add(StreamSpec(id="a", uri=sample_video.name))  # Hog holds the one thread
            answers: list[tuple[int, dict[str, Any]]] = []

            async def stalled() -> bool:
                answers.append(await ready.ready())
                return "runtime.threads" in answers[-1][1].get("not_ready", {})

            while not await stalled():
                await asyncio.sleep(0.1)
                assert len(answers) < GUARD_S * 10, "never reported the stall (hang guard)"
            status, body = answers[-1]
            assert status == 503 and body["checks"]["stages_ready"] is False
            reason = body["not_ready"]["runtime.threads"]
            assert reason.startswith("every thread of the shared pool (runtime.threads: 1) busy for"), reason
            assert "Event.wait" in reason, reason
            GATE.set()  # the calls return: the stall is over
            while await stalled():
                await asyncio.sleep(0.1)
    finally:
        GATE.set()
        await server.stop()
        runner.request_stop()
        await asyncio.wait_for(task, GUARD_S)
