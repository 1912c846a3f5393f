"""Joining a cluster: the buckets opened, a worker that runs beside the runner, and the cluster's
stream operations put in place of the runner's own for the HTTP API and NATS control."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import ClusterConfig
from ..results import build_event, encode, events_subject
from .control import ClusterControl
from .store import ClusterStore
from .worker import ClusterWorker

if TYPE_CHECKING:
    from ..bus import Bus
    from ..runner import Runner

log = logging.getLogger("streamgraph.cluster")

MAX_REPLICAS = 3


def new_worker_id() -> str:
    """This process among the workers: its host (a pod's name on Kubernetes) and its pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


def cluster_size(client: Any) -> int:
    """Servers of the NATS cluster the client is connected to, as the server tells (its
    ``connect_urls``: the client URLs of the cluster's servers; none for a lone server)."""
    info = getattr(client, "_server_info", None) or {}  # nats-py keeps the server's INFO here
    return max(1, len(set(info.get("connect_urls") or [])))


@dataclass
class Membership:
    worker: ClusterWorker
    task: asyncio.Task[None]

    def stop(self) -> None:
        """Claim nothing more (before the runner drains: its streams end as the run stops); the
        leases are still renewed until ``leave``."""
        self.worker.stop_claiming()

    async def leave(self) -> None:
        """After the runner has drained: give every lease up at once, so others take over."""
        self.worker.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.worker.release_all()


async def join(cluster: ClusterConfig, bus: Bus, runner: Runner) -> Membership:
    replicas = cluster.replicas or min(MAX_REPLICAS, cluster_size(bus.client))
    store = await ClusterStore.open(bus.client.jetstream(), cluster.name, lease_s=cluster.lease_s, replicas=replicas)
    pipeline = runner.graph.pipeline

    def announce(stream_id: str, fields: dict[str, Any]) -> None:
        """An event of the stream, on its events subject (``owner_changed``)."""
        rest = {key: value for key, value in fields.items() if key not in ("event", "reason")}
        body = build_event(pipeline, stream_id, fields["event"], reason=fields.get("reason"), fields=rest)
        subject = events_subject(bus.prefix, pipeline, stream_id)
        bus.put(subject, encode(body), msg_id=f"{pipeline}.{stream_id}.owner.{fields.get('epoch')}")

    changed = f"{bus.prefix}.cluster.{cluster.name}.changed"
    """Where a worker says "look now" to the others (a core NATS hint: the buckets stay the truth)."""

    async def notify() -> None:
        await bus.client.publish(changed, b"")

    worker = ClusterWorker(
        store,
        runner.local_control,
        runner.stats,
        worker_id=new_worker_id(),
        lease_s=cluster.lease_s,
        announce=announce,
        notify=notify,
    )

    async def on_changed(msg: Any) -> None:
        worker.poke()

    await bus.client.subscribe(changed, cb=on_changed)
    runner.use_control(ClusterControl(runner.local_control, worker, store))
    try:
        await worker.refresh()  # so the API lists the cluster from the start
    except Exception as exc:  # JetStream busy electing a leader: the worker's loop reads again
        log.warning("cluster %s: cannot read the catalog yet (%s); the worker keeps trying", cluster.name, exc)

    async def work() -> None:
        await runner.started.wait()  # the stream hosts take streams once started
        await worker.run()

    return Membership(worker, asyncio.create_task(work(), name=f"cluster:{worker.worker_id}"))
