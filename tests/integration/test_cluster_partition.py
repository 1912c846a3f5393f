"""Partition safety with real processes: a worker cut off from NATS (its only route to the server
goes through a TCP relay the test cuts, as a pulled cable) stops its streams once its leases may
have expired, although every call it makes to NATS waits out its timeout; the other worker takes
them over (``expired``); when the link comes back the first worker rejoins and is handed its
share again. Never do two workers publish one stream under one epoch."""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from pathlib import Path

import aiohttp
import nats

from . import clusterworkers
from .clusterworkers import Cluster, Results, Worker, tiny_clip, until
from .support import GUARD_S
from .tcpproxy import TcpProxy

cluster = clusterworkers.cluster
"""The fixture: workers of one cluster against the session's nats-server."""

STREAMS = [f"cam{n}" for n in range(4)]
RUNNING = re.compile(r"^streamgraph_streams_running\{[^}]*\} (\S+)$", re.MULTILINE)


async def running_on(http: aiohttp.ClientSession, worker: Worker) -> float:
    """Streams the worker itself runs now (its ``/metrics``: started at its publisher, not ended)."""
    async with http.get(f"{worker.base}/metrics") as response:
        assert response.status == 200
        found = RUNNING.search(await response.text())
    assert found is not None, "no streamgraph_streams_running in /metrics"
    return float(found.group(1))


async def test_a_worker_cut_off_from_nats_stops_its_streams_and_rejoins(
    cluster: Cluster, tmp_path: Path, nats_server: object
) -> None:
    clip = tiny_clip(tmp_path / "clip.mp4")
    relay = TcpProxy("127.0.0.1", nats_server.port)  # type: ignore[attr-defined]
    await relay.start()
    assert cluster.http is not None
    http = cluster.http
    results = Results()
    client = await nats.connect(cluster.nats_url)
    try:
        await client.subscribe(f"{cluster.prefix}.cluster-test.>", cb=results.on_message)
        await client.flush()
        cut_off = await cluster.start_worker(nats_url=f"nats://127.0.0.1:{relay.port}")
        other = await cluster.start_worker()
        for stream_id in STREAMS:
            body = {"id": stream_id, "uri": str(clip), "options": {"rate": "native", "loop": True}}
            async with http.post(f"{other.base}/streams", json=body) as response:
                assert response.status == 201, await response.text()

        async def two_each() -> bool:
            owners = await cluster.owners_of(other)
            return None not in owners.values() and sorted(Counter(owners.values()).values()) == [2, 2]

        await until(two_each, "four streams spread two per worker")
        await until(lambda: _holds(set(results.latest) == set(STREAMS)), "results of every stream")
        owners = await cluster.owners_of(other)
        cut_off_id = next(o for o in owners.values() if o is not None and o.endswith(f"-{cut_off.process.pid}"))
        stranded = {sid for sid, owner in owners.items() if owner == cut_off_id}
        epochs = {sid: s["epoch"] for sid, s in (await cluster.streams(other)).items()}

        await relay.cut()
        results.mark()

        async def stopped_there() -> bool:
            return await running_on(http, cut_off) == 0

        # Its renewals cannot reach NATS: it stops its streams by itself (its API still answers).
        await until(stopped_there, "the cut-off worker stopping its streams")

        async def taken_over() -> bool:
            return all(any(o != cut_off_id for o, _ in results.owners.get(sid, set())) for sid in stranded)

        await until(taken_over, "results of the stranded streams from the other worker")
        moved = [m for m in results.moves if m["stream_id"] in stranded and m["previous_owner"] == cut_off_id]
        assert {m["stream_id"] for m in moved} == stranded and {m["reason"] for m in moved} == {"expired"}, moved
        assert all(m["epoch"] > epochs[m["stream_id"]] for m in moved), (moved, epochs)
        stopped = [line for line in cut_off.log if "its lease was not renewed" in line]
        assert {sid for sid in stranded if any(f"stream {sid}:" in line for line in stopped)} == stranded, stopped

        # The link comes back: the worker rejoins and is handed its share again.
        await relay.restore()
        await until(two_each, "two streams per worker again after the link came back")
        await until(lambda: running_on_is(http, cut_off, 2), "the rejoined worker running its two streams")
        assert all(len(o) == 1 for o in results.by_epoch().values()), results.by_epoch()
        cut_off.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(cut_off.ended(), GUARD_S)
        assert cut_off.process.returncode == 0, "".join(cut_off.log[-30:])
    finally:
        await client.drain()
        await relay.close()


async def running_on_is(http: aiohttp.ClientSession, worker: Worker, count: int) -> bool:
    return await running_on(http, worker) == count


async def _holds(value: bool) -> bool:
    return value
