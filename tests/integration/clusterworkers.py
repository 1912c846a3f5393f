"""Worker processes of one cluster for tests: ``streamgraph run`` with a ``cluster:`` section,
each serving its API on a free port, against a NATS server or cluster (``--nats-url`` seeds), and
a recorder of who published each stream's results under which epoch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pipeline.bus import free_port
from tests.clips import flat_clip

from .support import EVENT_VALIDATOR, GUARD_S, RESULT_VALIDATOR, start_cli, wait_listening


def tiny_clip(path: Path, frames: int = 50) -> Path:
    """2 s of 96x64 video at 25 fps: cheap to decode six times over on two cores."""
    return flat_clip(path, frames=frames, rate=25)


def worker_config(
    folder: Path, port: int, cluster: str, prefix: str, lease_s: float, jetstream: str | None = None
) -> Path:
    config = folder / f"worker-{port}.yaml"
    stored = f", jetstream: {{stream: {jetstream}}}" if jetstream else ""
    config.write_text(
        f"""
pipeline: cluster-test
nats: {{prefix: {prefix}{stored}}}
cluster: {{name: {cluster}, lease_s: {lease_s}}}
api: {{listen: '127.0.0.1:{port}'}}
stages:
  - {{name: cams, type: streams}}
  - {{name: decode, type: decode, inputs: [cams]}}
  - {{name: publish, type: publish, inputs: [decode]}}
"""
    )
    return config


@dataclass
class Worker:
    port: int
    process: asyncio.subprocess.Process
    log: list[str] = field(default_factory=list)
    """Its stderr lines so far (read all along: a full pipe would block a chatty worker)."""
    reading: list[asyncio.Task[None]] = field(default_factory=list)

    def read_output(self) -> None:
        async def keep(stream: asyncio.StreamReader | None, into: list[str] | None) -> None:
            while stream is not None and (line := await stream.readline()):
                if into is not None:
                    into.append(line.decode(errors="replace"))

        self.reading = [
            asyncio.ensure_future(keep(self.process.stderr, self.log)),
            asyncio.ensure_future(keep(self.process.stdout, None)),
        ]

    async def ended(self) -> None:
        """Wait for the process to end and its output to be read."""
        await self.process.wait()
        await asyncio.gather(*self.reading, return_exceptions=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Results:
    """Who published each stream's results, under which epoch, since ``mark``."""

    owners: dict[str, set[tuple[str, int]]] = field(default_factory=dict)
    latest: dict[str, tuple[str, int]] = field(default_factory=dict)
    all_owners: dict[str, set[tuple[str, int]]] = field(default_factory=dict)
    moves: list[dict[str, Any]] = field(default_factory=list)
    """``owner_changed`` events, in arrival order."""

    async def on_message(self, msg: Any) -> None:
        if msg.subject.endswith(".events"):
            event = json.loads(msg.data)
            EVENT_VALIDATOR.validate(event)
            if event["event"] == "owner_changed":
                self.moves.append(event)
            return
        body = json.loads(msg.data)
        RESULT_VALIDATOR.validate(body)
        stamp = (body["owner"], body["epoch"])
        self.owners.setdefault(body["stream_id"], set()).add(stamp)
        self.latest[body["stream_id"]] = stamp

    def mark(self) -> None:
        """Forget who published so far (``owners``); ``all_owners`` keeps everything."""
        for stream_id, stamps in self.owners.items():
            self.all_owners.setdefault(stream_id, set()).update(stamps)
        self.owners = {}

    def by_epoch(self) -> dict[tuple[str, int], set[str]]:
        """(stream, epoch) -> the workers that published it under that epoch (one each, always)."""
        self.mark()
        found: dict[tuple[str, int], set[str]] = {}
        for stream_id, stamps in self.all_owners.items():
            for owner, epoch in stamps:
                found.setdefault((stream_id, epoch), set()).add(owner)
        return found


class Cluster:
    def __init__(self, nats_url: str, folder: Path, cli_env: dict[str, str], *, lease_s: float) -> None:
        self.nats_url = nats_url
        self.lease_s = lease_s
        self.folder = folder
        self.env = cli_env
        self.name = f"c{uuid.uuid4().hex[:8]}"
        self.prefix = f"p{uuid.uuid4().hex[:8]}"
        self.workers: list[Worker] = []
        self.http: aiohttp.ClientSession | None = None
        self.jetstream: str | None = None
        """The JetStream stream the workers publish into (``nats.jetstream``), if any."""

    async def start_worker(self, nats_url: str | None = None) -> Worker:
        """A worker against ``nats_url`` (default: the cluster's seeds)."""
        port = free_port()
        config = worker_config(self.folder, port, self.name, self.prefix, self.lease_s, self.jetstream)
        url = nats_url or self.nats_url
        process = await start_cli("run", str(config), "--nats-url", url, "--no-progress", env=self.env)
        worker = Worker(port, process)
        self.workers.append(worker)
        assert self.http is not None
        listening = asyncio.ensure_future(wait_listening(self.http, worker.base))
        exited = asyncio.ensure_future(process.wait())
        await asyncio.wait({listening, exited}, return_when=asyncio.FIRST_COMPLETED)
        exited.cancel()
        if not listening.done() or listening.exception() is not None:
            listening.cancel()
            if process.returncode is None:
                process.kill()
            assert process.stderr is not None
            stderr = (await process.stderr.read()).decode()
            raise AssertionError(f"worker on port {port} never served its API:\n{stderr[-3000:]}")
        worker.read_output()
        return worker

    async def streams(self, worker: Worker) -> dict[str, dict[str, Any]]:
        assert self.http is not None
        async with self.http.get(f"{worker.base}/streams") as response:
            assert response.status == 200
            return {s["id"]: s for s in (await response.json())["streams"]}

    async def owners_of(self, worker: Worker) -> dict[str, str | None]:
        return {sid: s.get("owner") for sid, s in (await self.streams(worker)).items()}


async def until(condition: Any, what: str) -> None:
    async def poll() -> None:
        while not await condition():
            await asyncio.sleep(0.2)

    try:
        await asyncio.wait_for(poll(), GUARD_S)
    except TimeoutError:
        raise AssertionError(f"no {what} within {GUARD_S:g} s (hang guard)") from None


async def all_running(cluster: Cluster, worker: Worker) -> bool:
    return {s["state"] for s in (await cluster.streams(worker)).values()} == {"running"}


async def owners_all_but(cluster: Cluster, worker: Worker, streams: set[str], not_owner: str) -> bool:
    """Whether ``worker`` lists each of ``streams`` owned, and by another than ``not_owner``."""
    owners = await cluster.owners_of(worker)
    return all(owners.get(sid) not in (None, not_owner) for sid in streams)


def worker_of(cluster: Cluster, owner: str) -> Worker:
    """The worker process a worker id names (``<host>-<pid>``)."""
    return next(w for w in cluster.workers if owner.endswith(f"-{w.process.pid}"))


CLUSTER_LEASE_S = 3.0
"""The ``cluster`` fixture's lease: short, so takeovers in tests are quick."""


@pytest.fixture()
async def cluster(nats_server: Any, tmp_path: Path, cli_env: dict[str, str]) -> AsyncIterator[Cluster]:
    running = Cluster(nats_server.url, tmp_path, cli_env, lease_s=CLUSTER_LEASE_S)
    async with aiohttp.ClientSession() as http:
        running.http = http
        try:
            yield running
        finally:
            for worker in running.workers:
                if worker.process.returncode is None:
                    worker.process.kill()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(worker.ended(), GUARD_S)
