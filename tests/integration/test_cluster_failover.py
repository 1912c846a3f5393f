"""The issue's cluster test with real processes on one machine: a real 3-node NATS cluster
(JetStream on each, routes between them), worker processes with 12 looping file streams.

Every stream is owned by exactly one worker; a NATS node killed changes no owner and results go
on; a 4th worker receives its share within two lease periods and no stream moves twice; a worker
SIGKILLed has its streams producing results on the others within ``lease_s`` + 5 s; one stopped
(SIGTERM) has them resume elsewhere within 3 s; and never do two workers publish one stream under
one epoch. The bounds on time are the issue's acceptance;
they are checked with a margin for this shared machine, and each measured figure is in the
assertion message."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from pathlib import Path

import aiohttp
import nats

from . import natscluster
from .clusterworkers import Cluster, Results, all_running, tiny_clip, until, worker_of
from .natscluster import NatsCluster
from .support import GUARD_S

nats_cluster = natscluster.nats_cluster
"""The fixture: a started 3-node NATS cluster per test."""

LEASE_S = 15.0
"""Renewals every 3.75 s ride out the JetStream leader elections after a node dies, on this busy
two-core machine (a lease must outlast them: a worker that cannot renew in time stops its streams,
by design)."""
STREAMS = [f"cam{n:02}" for n in range(12)]
MARGIN_S = 5.0
"""Slack for a loaded two-core machine on top of the issue's bounds."""


async def test_workers_on_a_nats_cluster(nats_cluster: NatsCluster, tmp_path: Path, cli_env: dict[str, str]) -> None:
    clip = tiny_clip(tmp_path / "clip.mp4")
    cluster = Cluster(nats_cluster.seeds, tmp_path, cli_env, lease_s=LEASE_S)
    results = Results()
    listener = await nats.connect(servers=nats_cluster.urls, max_reconnect_attempts=-1)
    async with aiohttp.ClientSession() as http:
        cluster.http = http
        try:
            await listener.subscribe(f"{cluster.prefix}.cluster-test.>", cb=results.on_message)
            await listener.flush()
            first = await cluster.start_worker()
            for _ in range(2):
                await cluster.start_worker()
            for stream_id in STREAMS:
                body = {"id": stream_id, "uri": str(clip), "options": {"rate": "native", "loop": True}}
                async with http.post(f"{first.base}/streams", json=body) as response:
                    assert response.status == 201, await response.text()

            async def spread(per_worker: list[int]) -> bool:
                owners = await cluster.owners_of(cluster.workers[-1])
                counts = sorted(Counter(owners.values()).values())
                return set(owners) == set(STREAMS) and None not in owners.values() and counts == per_worker

            await until(lambda: spread([4, 4, 4]), "12 streams spread four per worker")
            await until(lambda: all_running(cluster, first), "every stream running")
            await until(lambda: _holds(set(results.latest) == set(STREAMS)), "results of every stream")

            # A NATS node dies: the workers fail over to another seed and keep their leases.
            before = await cluster.owners_of(first)
            moves = len(results.moves)
            await asyncio.to_thread(nats_cluster.kill, 0)
            results.mark()
            await until(lambda: _holds(set(results.owners) == set(STREAMS)), "results of every stream after the kill")
            await asyncio.sleep(LEASE_S)  # a lease that was not renewed meanwhile would have expired by now
            assert await cluster.owners_of(first) == before
            assert results.moves[moves:] == [], "a stream changed owner when a NATS node died"
            # The cluster goes on with two of its three nodes (a quorum of the replicated buckets).

            # A 4th worker joins: it receives its share, and no stream moves twice.
            moves = len(results.moves)
            joined_at = time.monotonic()
            await cluster.start_worker()
            await until(lambda: spread([3, 3, 3, 3]), "12 streams spread three per worker")
            took = time.monotonic() - joined_at
            assert took < 2 * LEASE_S + MARGIN_S, f"the 4th worker got its share after {took:.1f} s"
            await until(lambda: _holds(len(results.moves) - moves >= 3), "the three owner_changed events")
            await until(lambda: all_running(cluster, cluster.workers[-1]), "every stream running")
            joined = results.moves[moves:]
            summary = [(m["stream_id"], m["reason"], m["previous_owner"], m["owner"], m["epoch"]) for m in joined]
            assert len(joined) == 3 and len({m["stream_id"] for m in joined}) == 3, summary
            assert {m["reason"] for m in joined} == {"released"}, joined

            # A worker is SIGKILLed: its streams produce results on the others.
            owners = await cluster.owners_of(first)
            victim_owner = owners[STREAMS[0]]
            assert victim_owner is not None
            orphaned = {sid for sid, owner in owners.items() if owner == victim_owner}
            victim = worker_of(cluster, victim_owner)
            killed_at = time.monotonic()
            victim.process.kill()
            results.mark()

            async def taken_over() -> bool:
                return all(any(o != victim_owner for o, _ in results.owners.get(sid, set())) for sid in orphaned)

            await until(taken_over, "results of the killed worker's streams from the others")
            took = time.monotonic() - killed_at
            assert took < LEASE_S + 5.0 + MARGIN_S, f"its streams produced results elsewhere after {took:.1f} s"

            # A worker is stopped (SIGTERM): it drains, hands its leases back and tells the others,
            # so its streams resume elsewhere at once, not after a lease period. (Asked of a worker
            # still alive: the killed one may have been the first.)
            survivor = next(w for w in cluster.workers if w is not victim and w.process.returncode is None)
            owners = await cluster.owners_of(survivor)
            leaving_owner = next(o for o in owners.values() if o is not None and o != victim_owner)
            leaving = worker_of(cluster, leaving_owner)
            handed = {sid for sid, owner in owners.items() if owner == leaving_owner}
            results.mark()
            stopped_at = time.monotonic()
            leaving.process.send_signal(signal.SIGTERM)

            async def resumed() -> bool:
                return all(any(o != leaving_owner for o, _ in results.owners.get(sid, set())) for sid in handed)

            await until(resumed, "results of the stopped worker's streams from the others")
            took = time.monotonic() - stopped_at
            assert took < 3.0 + MARGIN_S, f"its streams resumed elsewhere after {took:.1f} s (lease {LEASE_S:g} s)"
            assert await asyncio.wait_for(leaving.process.wait(), GUARD_S) == 0

            # Never two workers publishing one stream under one epoch.
            assert all(len(owners) == 1 for owners in results.by_epoch().values()), results.by_epoch()
        finally:
            with contextlib.suppress(Exception):
                await listener.drain()
            await _stop_all(cluster)


async def _holds(value: bool) -> bool:
    return value


async def _stop_all(cluster: Cluster) -> None:
    for worker in cluster.workers:
        if worker.process.returncode is None:
            worker.process.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(worker.ended(), GUARD_S)
