"""Workers of one cluster as real processes (``streamgraph run`` with a ``cluster:`` section)
against a real nats-server with JetStream: one catalog, each stream run by exactly one worker,
results stamped with their owner and lease epoch, and streams taken over when a worker dies
(SIGKILL: after its lease expires) or leaves (SIGTERM: at once)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import nats

from . import clusterworkers
from .clusterworkers import Cluster, Results, all_running, owners_all_but, tiny_clip, until, worker_of
from .support import GUARD_S

STREAMS = [f"cam{n}" for n in range(6)]


cluster = clusterworkers.cluster
"""The fixture: workers of one cluster against the session's nats-server, every one killed at the end."""


async def test_workers_share_one_catalog_and_take_over_when_one_goes(cluster: Cluster, tmp_path: Path) -> None:
    clip = tiny_clip(tmp_path / "clip.mp4")
    first = await cluster.start_worker()
    others = [await cluster.start_worker(), await cluster.start_worker()]
    assert cluster.http is not None
    results = Results()
    client = await nats.connect(cluster.nats_url)
    await client.subscribe(f"{cluster.prefix}.cluster-test.>", cb=results.on_message)
    await client.flush()
    for stream_id in STREAMS:  # all added through one worker
        body = {"id": stream_id, "uri": str(clip), "options": {"rate": "native", "loop": True}}
        async with cluster.http.post(f"{first.base}/streams", json=body) as response:
            assert response.status == 201, await response.text()
    async with cluster.http.post(f"{others[0].base}/streams", json={"id": "cam0", "uri": str(clip)}) as response:
        assert response.status == 409  # the catalog is one, whichever worker is asked

    try:

        async def spread() -> bool:
            owners = await cluster.owners_of(others[1])  # any worker lists the whole cluster
            counts = [list(owners.values()).count(f) for f in set(owners.values())]
            return set(owners) == set(STREAMS) and None not in owners.values() and sorted(counts) == [2, 2, 2]

        await until(spread, "six streams spread two per worker")

        async def all_running_seen_by_first() -> bool:  # each worker's view is as of its last tick
            return {s["state"] for s in (await cluster.streams(first)).values()} == {"running"}

        await until(all_running_seen_by_first, "every stream running, as the first worker sees it")
        listed = await cluster.streams(first)
        firsts = [m for m in results.moves if m["reason"] == "new"]
        assert sorted(m["stream_id"] for m in firsts) == STREAMS, results.moves
        assert all(m["previous_owner"] is None and m["epoch"] == listed[m["stream_id"]]["epoch"] for m in firsts)
        assert all(isinstance(s["epoch"], int) and s["since"] for s in listed.values())

        await until(lambda: _holds(set(results.latest) == set(STREAMS)), "results of every stream")
        # Each stream's results come from the one worker the catalog names, under its epoch.
        for stream_id, stream in listed.items():
            assert results.latest[stream_id] == (stream["owner"], stream["epoch"]), stream_id

        # SIGKILL a worker: its streams are claimed by the others once its leases expire.
        victim_owner = listed["cam0"]["owner"]
        victim = worker_of(cluster, victim_owner)
        orphaned = {sid for sid, s in listed.items() if s["owner"] == victim_owner}
        victim.process.kill()
        survivors = [w for w in cluster.workers if w is not victim]
        results.mark()

        async def taken_over() -> bool:
            return all(any(owner != victim_owner for owner, _ in results.owners.get(sid, set())) for sid in orphaned)

        await until(taken_over, "results of the dead worker's streams from the others")
        expired = [m for m in results.moves if m["previous_owner"] == victim_owner]
        assert {m["stream_id"] for m in expired} == orphaned, results.moves
        assert {m["reason"] for m in expired} == {"expired"}, expired
        await until(lambda: all_running(cluster, survivors[0]), "every stream running again")
        after = await cluster.streams(survivors[0])
        for sid in orphaned:
            assert after[sid]["owner"] != victim_owner
            taken = [epoch for owner, epoch in results.owners[sid] if owner != victim_owner]
            assert taken and all(epoch > listed[sid]["epoch"] for epoch in taken), (sid, results.owners[sid])

        # SIGTERM a worker: it drains and hands its streams over at once (no lease to wait out).
        leaving = survivors[0]
        leaving_id = next(s["owner"] for s in after.values() if s["owner"].endswith(f"-{leaving.process.pid}"))
        handed = {sid for sid, s in after.items() if s["owner"] == leaving_id}
        leaving.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(leaving.process.wait(), GUARD_S)
        assert leaving.process.returncode == 0
        last = survivors[1]
        await until(
            lambda: owners_all_but(cluster, last, handed, leaving_id),
            "the leaving worker's streams owned by the last one",
        )
        handed_over = [m for m in results.moves if m["previous_owner"] == leaving_id]
        assert {m["stream_id"] for m in handed_over} == handed and {m["reason"] for m in handed_over} == {"released"}
        # Never two workers publishing one stream under one epoch.
        assert all(len(owners) == 1 for owners in results.by_epoch().values()), results.by_epoch()

        # DELETE on any worker stops the stream wherever it runs.
        async with cluster.http.delete(f"{last.base}/streams/cam1") as response:
            assert response.status == 200, await response.text()
        assert "cam1" not in await cluster.streams(last)
    finally:
        await client.drain()


async def _holds(value: bool) -> bool:
    return value
