"""The cluster ``bench/scaleout.py`` measures: its worker processes, the streams added to it, what a
subscriber receives from it (results with their owner and epoch, ``owner_changed`` events), and
the stops, joins and key-value windows the bench times."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
from scaleout_figures import (
    Join,
    KvRates,
    Outage,
)

from pipeline.bus import free_port
from pipeline.cluster.store import bucket_names
from tests.clips import flat_clip

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = "scaleout"
CLIP_S = 2.0
GUARD_S = 120.0
"""How long the bench waits for anything before it calls the run broken (not a timing figure)."""


class BenchError(Exception):
    """The cluster did not do what the measurement waits for (within ``GUARD_S``)."""


def tiny_clip(path: Path, fps: int) -> Path:
    """``CLIP_S`` of 96x64 H.264 at ``fps``: cheap to decode many times over on two cores."""
    return flat_clip(path, frames=round(CLIP_S * fps), rate=fps)


# --------------------------------------------------------------------------- what is received


@dataclass(frozen=True)
class Move:
    at: float
    stream_id: str
    owner: str
    previous: str | None
    reason: str


@dataclass
class Takeover:
    """Waits for results of ``streams`` from any worker but ``gone``, from ``began`` on."""

    began: float
    streams: set[str]
    gone: str
    after_s: dict[str, float] = field(default_factory=dict)

    def see(self, stream_id: str, owner: str, now: float) -> None:
        if stream_id in self.streams and stream_id not in self.after_s and owner != self.gone:
            self.after_s[stream_id] = now - self.began

    @property
    def done(self) -> bool:
        return len(self.after_s) == len(self.streams)


@dataclass
class Received:
    """Each stream's latest (owner, epoch), the owners seen per (stream, epoch), and the
    ``owner_changed`` events, stamped with their arrival (``time.monotonic``)."""

    latest: dict[str, tuple[str, int]] = field(default_factory=dict)
    by_epoch: dict[tuple[str, int], set[str]] = field(default_factory=dict)
    moves: list[Move] = field(default_factory=list)
    takeovers: list[Takeover] = field(default_factory=list)
    results: int = 0
    verbose: bool = False
    began: float = field(default_factory=time.monotonic)

    async def on_message(self, msg: Any) -> None:
        now = time.monotonic()
        body = json.loads(msg.data)
        if msg.subject.endswith(".events"):
            if body.get("event") == "owner_changed":
                move = Move(now, body["stream_id"], body["owner"], body.get("previous_owner"), body.get("reason", "?"))
                self.moves.append(move)
                if self.verbose:
                    say(
                        f"  {now - self.began:7.2f} s  {move.stream_id}: {move.previous} -> {move.owner} "
                        f"({move.reason}, epoch {body.get('epoch')})"
                    )
            return
        self.results += 1
        owner, epoch = body.get("owner", "?"), body.get("epoch", -1)
        self.latest[body["stream_id"]] = (owner, epoch)
        self.by_epoch.setdefault((body["stream_id"], epoch), set()).add(owner)
        for takeover in self.takeovers:
            takeover.see(body["stream_id"], owner, now)

    def last_move_at(self) -> float:
        return self.moves[-1].at if self.moves else 0.0


# --------------------------------------------------------------------------- one cluster


@dataclass
class Worker:
    port: int
    process: asyncio.subprocess.Process
    log: Path

    @property
    def id(self) -> str:
        """The worker id the cluster knows it by (``pipeline/cluster/member.py``)."""
        return f"{socket.gethostname()}-{self.process.pid}"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Cluster:
    """N workers of one cluster, the streams added to it, and what the bench receives from it."""

    def __init__(
        self, args: argparse.Namespace, lease_s: float, nats_url: str, folder: Path, clip: Path, http: Any
    ) -> None:
        self.args = args
        self.lease_s = lease_s
        self.tick_s = lease_s / 4
        self.nats_url = nats_url
        self.folder = folder
        self.clip = clip
        self.http: aiohttp.ClientSession = http
        tag = uuid.uuid4().hex[:6]
        self.name = f"bench{tag}"
        self.prefix = f"scale{tag}"
        self.workers: list[Worker] = []
        """Live workers, oldest first."""
        self.stopped: list[Worker] = []
        self.received = Received(verbose=args.verbose)
        self.stream_ids = [f"cam{n}" for n in range(args.streams)]
        self.client: Any = None

    # --- processes ---------------------------------------------------------------------------

    def config(self, port: int) -> Path:
        path = self.folder / f"{self.name}-{port}.yaml"
        work = "" if self.args.no_decode else "  - {name: decode, type: decode, inputs: [cams]}\n"
        path.write_text(
            f"pipeline: {PIPELINE}\n"
            f"nats: {{prefix: {self.prefix}}}\n"
            f"cluster: {{name: {self.name}, lease_s: {self.lease_s:g}}}\n"
            f"api: {{listen: '127.0.0.1:{port}'}}\n"
            "stages:\n"
            "  - {name: cams, type: streams}\n"
            f"{work}"
            f"  - {{name: publish, type: publish, inputs: [{'cams' if self.args.no_decode else 'decode'}]}}\n"
        )
        return path

    async def launch(self) -> Worker:
        port = free_port()
        log = (self.args.logs or self.folder) / f"{self.name}-{port}.log"
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "pipeline.cli",
                "run",
                str(self.config(port)),
                "--nats-url",
                self.nats_url,
                "--no-progress",
                cwd=str(ROOT),
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
        worker = Worker(port, process, log)
        self.workers.append(worker)
        return worker

    async def listening(self, worker: Worker) -> None:
        async def poll() -> None:
            while True:
                if worker.process.returncode is not None:
                    raise BenchError(f"worker {worker.id} exited ({worker.process.returncode}): see {worker.log}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with self.http.get(f"{worker.base}/healthz") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)

        await guard(poll(), f"worker {worker.id} answering /healthz")

    async def start(self) -> None:
        self.client = await nats.connect(self.nats_url)
        await self.client.subscribe(f"{self.prefix}.{PIPELINE}.>", cb=self.received.on_message)
        await self.client.flush()
        started = [await self.launch() for _ in range(self.args.workers)]
        await asyncio.gather(*(self.listening(w) for w in started))
        for stream_id in self.stream_ids:
            body = {"id": stream_id, "uri": str(self.clip), "options": {"rate": "native", "loop": True}}
            async with self.http.post(f"{started[0].base}/streams", json=body) as response:
                if response.status != 201:
                    raise BenchError(f"POST /streams {stream_id}: {response.status} {await response.text()}")
        await self.settle("the streams spread over the first workers")

    async def close(self) -> None:
        for worker in self.workers + self.stopped:
            if worker.process.returncode is None:
                worker.process.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(worker.process.wait(), 10)
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.drain()

    # --- the state of the cluster ------------------------------------------------------------

    async def listing(self, worker: Worker) -> dict[str, dict[str, Any]]:
        async with self.http.get(f"{worker.base}/streams") as response:
            if response.status != 200:
                return {}
            return {s["id"]: s for s in (await response.json())["streams"]}

    async def balanced(self) -> bool:
        """Every stream owned by a live worker and running, its latest result from the owner and
        epoch the oldest worker lists, and no worker more than one stream above another."""
        for worker in self.workers:
            if worker.process.returncode is not None:
                raise BenchError(f"worker {worker.id} exited ({worker.process.returncode}): see {worker.log}")
        live = {w.id for w in self.workers}
        listed = await self.listing(self.workers[0])
        if set(listed) != set(self.stream_ids):
            return False
        counts: Counter[str] = Counter()
        for stream_id, stream in listed.items():
            owner = stream.get("owner")
            if owner not in live or stream.get("state") != "running":
                return False
            if self.received.latest.get(stream_id) != (owner, stream.get("epoch")):
                return False
            counts[owner] += 1
        held = [counts[w] for w in live]
        return max(held) - min(held) <= 1

    async def settle(self, what: str) -> float:
        """Wait until ``balanced`` and no ``owner_changed`` for two ticks; the seconds until it
        was first balanced (the quiet time after it left out)."""
        began = time.monotonic()
        balanced_at: float | None = None

        async def poll() -> None:
            nonlocal balanced_at
            while True:
                if await self.balanced():
                    if balanced_at is None:
                        balanced_at = time.monotonic()
                    if time.monotonic() - max(balanced_at, self.received.last_move_at()) >= 2 * self.tick_s:
                        return
                else:
                    balanced_at = None
                await asyncio.sleep(0.2)

        await guard(poll(), what)
        assert balanced_at is not None
        return balanced_at - began

    # --- the measurements --------------------------------------------------------------------

    async def kv_window(self) -> KvRates:
        js = self.client.jetstream()
        names = bucket_names(self.name)
        mark = len(self.received.moves)
        account_before = await js.account_info()
        before = {b: await js.stream_info(f"KV_{b}") for b in names}
        began = time.monotonic()
        await asyncio.sleep(self.args.kv_window_s)
        after = {b: await js.stream_info(f"KV_{b}") for b in names}
        window_s = time.monotonic() - began
        account_after = await js.account_info()
        return KvRates(
            window_s=window_s,
            workers=len(self.workers),
            streams=len(self.stream_ids),
            tick_s=self.tick_s,
            writes={b: after[b].state.last_seq - before[b].state.last_seq for b in names},
            record_bytes={
                b: after[b].state.bytes / after[b].state.messages if after[b].state.messages else 0.0 for b in names
            },
            api_requests=account_after.api.total - account_before.api.total,
            consumers={b: after[b].state.consumer_count for b in names},
            moves=len(self.received.moves) - mark,
        )

    async def stop_one(self, sig: signal.Signals) -> Outage:
        """Stop the oldest worker with ``sig``; until its streams have results from the others."""
        victim = self.workers.pop(0)
        self.stopped.append(victim)
        orphaned = {sid for sid, (owner, _) in self.received.latest.items() if owner == victim.id}
        mark = len(self.received.moves)
        began = time.monotonic()
        takeover = Takeover(began, orphaned, victim.id)
        self.received.takeovers.append(takeover)
        victim.process.send_signal(sig)
        self.note(f"{sig.name} {victim.id} (owned {', '.join(sorted(orphaned))})")
        exit_s: float | None = None

        async def taken_over() -> None:
            while not takeover.done:
                await asyncio.sleep(0.02)

        try:
            await guard(taken_over(), f"results of {victim.id}'s streams from the others after {sig.name}")
        finally:
            self.received.takeovers.remove(takeover)
        await guard(victim.process.wait(), f"{victim.id} exiting after {sig.name}")
        if sig == signal.SIGTERM:
            exit_s = time.monotonic() - began
            self.note(f"{victim.id} exited ({victim.process.returncode}) {exit_s:.2f} s after SIGTERM")
        await self.settle(f"the cluster settling after {sig.name} of {victim.id}")
        moves = self.received.moves[mark:]
        claimed: dict[str, float] = {}
        for move in moves:
            if move.stream_id in orphaned:
                claimed.setdefault(move.stream_id, move.at - began)
        return Outage(
            signal=sig.name,
            claimed_s=list(claimed.values()),
            streams=len(orphaned),
            all_s=max(takeover.after_s.values(), default=0.0),
            per_stream_s=list(takeover.after_s.values()),
            reasons=Counter(m.reason for m in moves if m.stream_id in orphaned),
            bystanders=sum(1 for m in moves if m.stream_id not in orphaned),
            exit_code=victim.process.returncode,
            exit_s=exit_s,
        )

    async def join(self, kind: str) -> Join:
        """Start one more worker; the moves until the cluster is balanced and quiet again."""
        mark = len(self.received.moves)
        worker = await self.launch()
        await self.listening(worker)
        self.note(f"{worker.id} started ({kind})")
        settle_s = await self.settle(f"the cluster settling after {worker.id} joined")
        moves = self.received.moves[mark:]
        per_stream = Counter(m.stream_id for m in moves)
        return Join(
            kind=kind,
            workers=len(self.workers),
            moved=len(per_stream),
            ideal=len(self.stream_ids) // len(self.workers),
            to_new=sum(1 for m in moves if m.owner == worker.id),
            twice=sorted(s for s, n in per_stream.items() if n > 1),
            reasons=Counter(m.reason for m in moves),
            settle_s=settle_s,
        )

    def note(self, line: str) -> None:
        if self.args.verbose:
            say(f"  {time.monotonic() - self.received.began:7.2f} s  {line}")

    async def consumers(self) -> dict[str, int]:
        """Consumers on each bucket's stream now."""
        js = self.client.jetstream()
        return {b: (await js.stream_info(f"KV_{b}")).state.consumer_count for b in bucket_names(self.name)}

    def fencing_violations(self) -> int:
        """(stream, epoch) pairs published by more than one worker (there should be none)."""
        return sum(1 for owners in self.received.by_epoch.values() if len(owners) > 1)


async def guard(awaitable: Any, what: str) -> Any:
    try:
        return await asyncio.wait_for(awaitable, GUARD_S)
    except TimeoutError:
        raise BenchError(f"no {what} within {GUARD_S:g} s") from None


def say(line: str) -> None:
    print(line, flush=True)
