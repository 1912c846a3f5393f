"""The cluster's buckets on a real nats-server with JetStream: the catalog, live workers, and
stream leases claimed, renewed, lost and released by compare-and-set."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

from pipeline.cluster.store import ClusterStore, LeaseLost

from .support import GUARD_S

LEASE_S = 3.0
"""Long enough that nothing expires between two steps of a test on a slow machine; the expiry
tests wait it out."""


@pytest.fixture()
async def store(nats_server: Any) -> AsyncIterator[ClusterStore]:
    client = await nats.connect(nats_server.url)
    try:
        yield await ClusterStore.open(client.jetstream(), f"t{uuid.uuid4().hex[:8]}", lease_s=LEASE_S)
    finally:
        await client.drain()


async def test_the_catalog_holds_specs_until_removed(store: ClusterStore) -> None:
    assert await store.streams() == {}
    await store.put_stream("cam1", {"uri": "rtsp://cam1/x"})
    await store.put_stream("cam2", {"uri": "/media/b.mp4", "options": {"loop": True}})
    assert await store.streams() == {
        "cam1": {"uri": "rtsp://cam1/x"},
        "cam2": {"uri": "/media/b.mp4", "options": {"loop": True}},
    }
    await store.remove_stream("cam1")
    assert list(await store.streams()) == ["cam2"]


async def test_one_claim_wins_and_its_epoch_stays_across_renewals(store: ClusterStore) -> None:
    first = await store.claim("cam1", "worker-a")
    assert first is not None and first.worker == "worker-a"
    assert await store.claim("cam1", "worker-b") is None  # held: the other claim loses
    renewed = await store.renew(first)
    assert renewed.epoch == first.epoch and renewed.revision > first.revision
    owners = await store.owners()
    assert owners["cam1"].worker == "worker-a" and owners["cam1"].epoch == first.epoch


async def test_a_released_lease_is_claimed_at_once_with_a_larger_epoch(store: ClusterStore) -> None:
    lease = await store.claim("cam1", "worker-a")
    assert lease is not None
    assert await store.release(lease)
    taken = await store.claim("cam1", "worker-b")
    assert taken is not None and taken.worker == "worker-b" and taken.epoch > lease.epoch
    assert not await store.release(lease)  # the old holder cannot release the new lease
    assert (await store.owners())["cam1"].worker == "worker-b"


async def test_a_lease_nobody_renews_expires_and_its_holder_learns_it_lost_it(store: ClusterStore) -> None:
    lease = await store.claim("cam1", "worker-a")
    assert lease is not None

    async def claimed_by_b() -> Any:
        while (taken := await store.claim("cam1", "worker-b")) is None:
            await asyncio.sleep(0.1)
        return taken

    taken = await asyncio.wait_for(claimed_by_b(), GUARD_S)  # after about LEASE_S
    assert taken.epoch > lease.epoch
    with pytest.raises(LeaseLost):
        await store.renew(lease)


async def test_workers_are_live_while_they_beat(store: ClusterStore) -> None:
    await store.heartbeat("worker-a", {"pid": 1})
    await store.heartbeat("worker-b", {"pid": 2})
    assert await store.live_workers() == ["worker-a", "worker-b"]
    await store.leave("worker-b")
    assert await store.live_workers() == ["worker-a"]

    async def gone() -> None:
        while await store.live_workers():
            await asyncio.sleep(0.1)

    await asyncio.wait_for(gone(), GUARD_S)  # worker-a stopped beating: gone after LEASE_S


async def test_a_worker_that_left_is_told_apart_from_one_that_stopped_beating(store: ClusterStore) -> None:
    await store.heartbeat("left", {})
    await store.heartbeat("crashed", {})
    await store.leave("left")
    assert await store.left_cleanly("left")
    assert not await store.left_cleanly("crashed")  # still beating: it has not left
    assert not await store.left_cleanly("never-seen")


async def test_a_renewal_whose_answer_was_lost_is_still_ours(store: ClusterStore) -> None:
    """A server failing over may write a renewal and lose its answer: the next renewal, from the
    revision before it, finds the record still names this worker and epoch, and goes on."""
    lease = await store.claim("cam1", "worker-a")
    assert lease is not None
    await store.renew(lease)  # went through; pretend the answer never came: keep the old lease
    again = await store.renew(lease)
    assert (again.worker, again.epoch) == (lease.worker, lease.epoch)
    assert (await store.renew(again)).epoch == lease.epoch


async def test_a_stream_handed_over_is_taken_only_by_its_receiver(store: ClusterStore) -> None:
    lease = await store.claim("cam1", "worker-a")
    assert lease is not None
    assert await store.hand_over(lease, "worker-b")
    handed = (await store.owners())["cam1"]
    assert (handed.worker, handed.handed_by) == ("worker-b", "worker-a")
    assert await store.claim("cam1", "worker-c") is None  # nobody else may claim it meanwhile
    taken = await store.take_over(handed)
    assert taken is not None and taken.worker == "worker-b" and taken.epoch > lease.epoch
    assert (await store.owners())["cam1"].handed_by is None
    assert await store.take_over(handed) is None  # taken already: that record is gone
    assert not await store.hand_over(lease, "worker-c")  # the old holder has nothing to hand
