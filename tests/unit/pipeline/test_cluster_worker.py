"""ClusterWorker's own rules, with a store and a local control of our own (the buckets and the
real processes are tests/integration/test_cluster*.py's): what it stops, records and claims."""

from __future__ import annotations

from typing import Any

from pipeline.cluster.store import Lease, LeaseLost
from pipeline.cluster.worker import ENDED, ClusterWorker
from pipeline.control import StreamSpec
from pipeline.stats import StreamStats

LEASE_S = 8.0  # a tick of 2 s


class FakeStore:
    def __init__(self) -> None:
        self.catalog: dict[str, dict[str, Any]] = {}
        self.leases: dict[str, Lease] = {}
        self.workers = {"me"}
        self.renew_error: Exception | None = None
        self.revision = 0

    async def streams(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self.catalog.items()}

    async def has_stream(self, stream_id: str) -> bool:
        return stream_id in self.catalog

    async def put_stream(self, stream_id: str, spec: dict[str, Any]) -> None:
        self.catalog[stream_id] = spec

    async def owners(self) -> dict[str, Lease]:
        return dict(self.leases)

    async def live_workers(self) -> list[str]:
        return sorted(self.workers)

    async def heartbeat(self, worker: str, info: dict[str, Any]) -> None:
        self.workers.add(worker)

    async def leave(self, worker: str) -> None:
        self.workers.discard(worker)

    async def left_cleanly(self, worker: str) -> bool:
        return False

    async def claim(self, stream_id: str, worker: str) -> Lease | None:
        if stream_id in self.leases:
            return None
        self.revision += 1
        lease = self.leases[stream_id] = Lease(stream_id, worker, self.revision, self.revision, 0.0)
        return lease

    async def renew(self, lease: Lease) -> Lease:
        if self.renew_error is not None:
            raise self.renew_error
        current = self.leases.get(lease.stream_id)
        if current is None or current.revision != lease.revision:
            raise LeaseLost("gone")
        self.revision += 1
        renewed = self.leases[lease.stream_id] = Lease(lease.stream_id, lease.worker, lease.epoch, self.revision, 0.0)
        return renewed

    async def release(self, lease: Lease) -> bool:
        current = self.leases.get(lease.stream_id)
        if current is None or current.revision != lease.revision:
            return False
        del self.leases[lease.stream_id]
        return True


class FakeLocal:
    """The worker's own streams: running, or failed with a reason."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.failed: dict[str, str] = {}
        self.removed: list[str] = []

    def is_running(self, stream_id: str) -> bool:
        return stream_id in self.running

    def failure(self, stream_id: str) -> str | None:
        return self.failed.get(stream_id)

    async def add(self, spec: StreamSpec) -> None:
        self.running.add(spec.id)

    async def remove(self, stream_id: str) -> None:
        self.running.discard(stream_id)
        self.removed.append(stream_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_worker() -> tuple[ClusterWorker, FakeStore, FakeLocal, Clock, list[tuple[str, dict[str, Any]]]]:
    store, local, clock = FakeStore(), FakeLocal(), Clock()
    events: list[tuple[str, dict[str, Any]]] = []
    worker = ClusterWorker(
        store,  # type: ignore[arg-type]
        local,  # type: ignore[arg-type]
        StreamStats(),
        worker_id="me",
        lease_s=LEASE_S,
        announce=lambda stream_id, event: events.append((stream_id, event)),
        clock=clock,
    )
    return worker, store, local, clock, events


async def test_it_claims_what_the_catalog_holds_and_stamps_its_results() -> None:
    worker, store, local, _, events = make_worker()
    store.catalog = {"a": {"uri": "a.mp4"}, "b": {"uri": "b.mp4"}}
    await worker.step()
    assert local.running == {"a", "b"} and set(worker.leases) == {"a", "b"}
    assert worker.stats.stream("a").lease == ("me", store.leases["a"].epoch)
    assert [(sid, e["reason"], e["previous_owner"]) for sid, e in events] == [("a", "new", None), ("b", "new", None)]


async def test_a_lost_lease_stops_the_stream_at_once() -> None:
    worker, store, local, _, _ = make_worker()
    store.catalog = {"a": {"uri": "a.mp4"}}
    await worker.step()
    store.leases["a"] = Lease("a", "other", 99, 99, 0.0)  # another worker holds it now
    await worker._renew_all()
    assert local.removed == ["a"] and "a" not in worker.leases
    assert store.leases["a"].worker == "other"  # never released: it is not this worker's


async def test_cut_off_from_nats_it_stops_once_its_lease_may_have_expired() -> None:
    worker, store, local, clock, _ = make_worker()
    store.catalog = {"a": {"uri": "a.mp4"}}
    await worker.step()
    store.renew_error = ConnectionError("no servers")
    clock.now += LEASE_S - worker.tick_s - 0.1  # still inside: keeps running
    await worker._renew_all()
    assert local.running == {"a"}
    clock.now += 0.2  # now the others may see the lease expired
    await worker._renew_all()
    assert local.running == set() and local.removed == ["a"]


async def test_a_stream_removed_from_the_catalog_stops_and_its_lease_goes() -> None:
    worker, store, local, _, _ = make_worker()
    store.catalog = {"a": {"uri": "a.mp4"}}
    await worker.step()
    del store.catalog["a"]
    await worker.step()
    assert local.removed == ["a"] and store.leases == {}


async def test_a_stream_that_ended_here_is_recorded_and_not_started_again() -> None:
    worker, store, local, _, _ = make_worker()
    store.catalog = {"a": {"uri": "a.mp4"}, "b": {"uri": "b.mp4"}}
    await worker.step()
    local.running -= {"a", "b"}
    local.failed["b"] = "cannot open b.mp4: Invalid data"
    await worker.step()
    assert store.catalog["a"][ENDED]["state"] == "ended"
    assert store.catalog["b"][ENDED] | {"at": 0} == {
        "state": "failed",
        "error": "cannot open b.mp4: Invalid data",
        "worker": "me",
        "at": 0,
    }
    assert store.leases == {}
    await worker.step()
    assert local.running == set()  # ended streams are not claimed again


async def test_draining_it_renews_but_claims_nothing_and_records_nothing() -> None:
    worker, store, local, _, _ = make_worker()
    store.catalog = {"a": {"uri": "a.mp4"}}
    await worker.step()
    worker.stop_claiming()
    local.running.clear()  # the run stops its streams
    store.catalog["b"] = {"uri": "b.mp4"}
    await worker.step()
    assert ENDED not in store.catalog["a"] and "b" not in local.running
    assert "a" in store.leases  # still renewed until released
    await worker.release_all()
    assert store.leases == {} and "me" not in store.workers
