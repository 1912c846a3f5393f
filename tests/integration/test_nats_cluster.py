"""A real 3-node NATS cluster (tests/integration/natscluster.py): a client given every seed fails
over when its node is SIGKILLed, the cluster's KV buckets (``ClusterStore``, replicas=3) keep a
lease and the catalog through the loss of a node, and ``Bus.connect`` takes the seeds as its URL.

No timing assertions: every wait is a hang guard (JetStream elects new leaders in a few seconds,
longer on a busy machine); requests that fail while it does are tried again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import nats
import nats.errors
from nats.aio.client import Client

from pipeline.bus import Bus
from pipeline.cluster.store import ClusterStore, Lease, LeaseLost, bucket_names
from pipeline.config import JetStreamConfig, NatsConfig

from . import natscluster
from .natscluster import NatsCluster
from .support import until

nats_cluster = natscluster.nats_cluster
"""The fixture: a started 3-node cluster per test (tests/integration has no conftest.py)."""

GUARD_S = 90.0
"""How long anything may take before it counts as a hang (never a timing assertion)."""
LEASE_S = 60.0
"""Longer than any failover here may take on a slow machine: these tests are about surviving the
loss of a node, not about expiry (tests/integration/test_cluster_store.py tests that)."""
RETRIED = (nats.errors.Error, TimeoutError)
"""What a request may raise while the client reconnects or JetStream elects a leader."""

T = TypeVar("T")


async def retried(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """``attempt()`` until it returns without one of ``RETRIED`` (a hang guard of ``GUARD_S``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GUARD_S
    while True:
        try:
            return await attempt()
        except RETRIED as exc:
            if loop.time() > deadline:
                raise AssertionError(f"no {what} within {GUARD_S:g} s (hang guard): {exc!r}") from exc
            await asyncio.sleep(0.2)


async def eventually(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    """Until ``check()`` is true (requests failing meanwhile are tried again; a hang guard)."""

    async def holds() -> None:
        if not await check():
            raise nats.errors.Error(f"not yet: {what}")

    await retried(what, holds)


@asynccontextmanager
async def connected(servers: list[str], name: str) -> AsyncIterator[Client]:
    """A nats-py client of these servers that reconnects forever (to whichever answers)."""
    client = await nats.connect(
        servers, name=name, connect_timeout=5, reconnect_time_wait=0.2, max_reconnect_attempts=-1
    )
    try:
        yield client
    finally:
        await client.close()


def node_of(cluster: NatsCluster, client: Client) -> int:
    assert client.is_connected and client.connected_url is not None
    return cluster.index_of(port=client.connected_url.port)


async def test_a_client_of_every_seed_goes_on_through_another_when_its_node_is_killed(
    nats_cluster: NatsCluster,
) -> None:
    async with connected(nats_cluster.urls, "failover") as client:
        js = client.jetstream(timeout=10)
        await retried("stream", lambda: js.add_stream(name="FAILOVER", subjects=["failover.>"], num_replicas=3))
        await retried("publish", lambda: js.publish("failover.a", b"before", headers={"Nats-Msg-Id": "a"}))
        reader = await retried("consumer", lambda: js.pull_subscribe("failover.>", durable="reader"))
        [first] = await retried("fetch", lambda: reader.fetch(1, timeout=10))
        assert first.data == b"before"
        await retried("ack", lambda: first.ack_sync(timeout=10))

        victim = node_of(nats_cluster, client)
        other = (victim + 1) % nats_cluster.size
        async with connected([nats_cluster.urls[other]], "responder") as responder:

            async def answer(msg: Any) -> None:
                await msg.respond(b"pong:" + msg.data)

            await responder.subscribe("echo.ping", cb=answer)
            await responder.flush()
            # The responder's interest reaches the client's node over a route a moment later:
            # until it has, the request gets "no responders" (retried).
            answer = await retried("request", lambda: client.request("echo.ping", b"1", timeout=10))
            assert answer.data == b"pong:1"

            nats_cluster.kill(victim)
            await until(
                lambda: client.is_connected and client.connected_url.port != nats_cluster.ports[victim],
                "reconnect to another seed",
            )
            assert node_of(nats_cluster, client) != victim

            reply = await retried("reply after the kill", lambda: client.request("echo.ping", b"2", timeout=5))
            assert reply.data == b"pong:2"
            # The same message id on every try: a publish stored before its ack was lost is stored once.
            ack = await retried(
                "JetStream publish after the kill",
                lambda: js.publish("failover.b", b"after", headers={"Nats-Msg-Id": "b"}, timeout=5),
            )
            assert ack.stream == "FAILOVER"
            [second] = await retried("fetch after the kill", lambda: reader.fetch(1, timeout=5))
            assert second.data == b"after"
            await retried("ack after the kill", lambda: second.ack_sync(timeout=10))
            info = await retried("stream info", lambda: js.stream_info("FAILOVER"))
            assert info.state.messages == 2

        await asyncio.to_thread(nats_cluster.restart, victim)  # the node comes back into the cluster

        async def every_replica_current() -> bool:
            cluster = (await js.stream_info("FAILOVER")).cluster
            replicas = (cluster.replicas or []) if cluster is not None else []
            return len(replicas) == nats_cluster.size - 1 and all(r.current and not r.offline for r in replicas)

        await eventually("the restarted node's replica caught up", every_replica_current)


async def renewed_through_failover(store: ClusterStore, lease: Lease) -> Lease:
    """``store.renew(lease)`` until it goes through. A try that failed may still have been stored
    (its answer lost in the failover): the next one then finds a newer revision, so ``LeaseLost``
    after a failed try counts only if the record is no longer this worker's lease of this epoch."""
    failed = False

    async def attempt() -> Lease:
        nonlocal failed, lease
        try:
            return await store.renew(lease)
        except RETRIED:
            failed = True
            raise
        except LeaseLost:
            if not failed:
                raise
            record = (await store.owners()).get(lease.stream_id)
            if record is None or (record.worker, record.epoch) != (lease.worker, lease.epoch):
                raise
            lease = record  # the lost answer's renewal: renew from its revision
            return await store.renew(lease)

    return await retried("lease renewal after the kill", attempt)


async def test_a_lease_outlives_the_loss_of_a_node_with_its_epoch_and_the_catalog(nats_cluster: NatsCluster) -> None:
    async with connected(nats_cluster.urls, "worker-a") as client:
        js = client.jetstream(timeout=10)
        store = await retried("buckets", lambda: ClusterStore.open(js, "cams", lease_s=LEASE_S, replicas=3))
        await store.put_stream("cam1", {"uri": "rtsp://cam1/live"})
        await store.put_stream("cam2", {"uri": "/media/b.mp4", "options": {"loop": True}})
        lease = await store.claim("cam1", "worker-a")
        assert lease is not None

        # Kill the node leading the owners bucket (the client's own node or another): its Raft
        # group must elect a new leader before the renewal can be stored.
        owners_stream = f"KV_{bucket_names('cams')[2]}"
        info = await js.stream_info(owners_stream)
        assert info.config.num_replicas == 3 and info.cluster is not None and info.cluster.leader
        victim = nats_cluster.index_of(name=info.cluster.leader)
        nats_cluster.kill(victim)

        renewed = await renewed_through_failover(store, lease)
        assert renewed.epoch == lease.epoch and renewed.revision > lease.revision
        owners = await retried("owners", store.owners)
        assert owners["cam1"].worker == "worker-a" and owners["cam1"].epoch == lease.epoch
        assert await retried("a competing claim", lambda: store.claim("cam1", "worker-b")) is None
        assert await retried("the catalog", store.streams) == {
            "cam1": {"uri": "rtsp://cam1/live"},
            "cam2": {"uri": "/media/b.mp4", "options": {"loop": True}},
        }
        leader = (await retried("owners stream info", lambda: js.stream_info(owners_stream))).cluster
        assert leader is not None and leader.leader != nats_cluster.names[victim]


async def test_bus_connect_takes_the_seeds_and_publishes_through_a_node_kill(nats_cluster: NatsCluster) -> None:
    async with connected(nats_cluster.urls, "setup") as admin:
        admin_js = admin.jetstream(timeout=10)
        # Replicated, so the results survive the node the bus is connected to.
        await retried(
            "stream", lambda: admin_js.add_stream(name="RESULTS", subjects=["streamgraph.clustered.>"], num_replicas=3)
        )
        config = NatsConfig(url=nats_cluster.seeds, jetstream=JetStreamConfig(stream="RESULTS", ack_timeout_s=2))
        bus = await Bus.connect(config, pipeline="clustered")
        try:
            assert bus.url == nats_cluster.seeds
            first = {"stream": "cam1", "pts": 0}
            await asyncio.wait_for(
                bus.publish("streamgraph.clustered.cam1.result", json.dumps(first).encode(), msg_id="cam1.0"), GUARD_S
            )
            victim = node_of(nats_cluster, bus.client)
            nats_cluster.kill(victim)
            second = {"stream": "cam1", "pts": 1}
            # The outbox sends it again (same message id) until the cluster acknowledges it.
            await asyncio.wait_for(
                bus.publish("streamgraph.clustered.cam1.result", json.dumps(second).encode(), msg_id="cam1.1"), GUARD_S
            )
            assert bus.connected and node_of(nats_cluster, bus.client) != victim
        finally:
            await asyncio.wait_for(bus.close(), GUARD_S)
        reader = await retried("reader", lambda: admin_js.pull_subscribe("streamgraph.clustered.>", durable="check"))
        messages = await retried("results", lambda: reader.fetch(2, timeout=5))
        assert [json.loads(message.data) for message in messages] == [first, second]
        info = await retried("stream info", lambda: admin_js.stream_info("RESULTS"))
        assert info.state.messages == 2
