"""ClusterWorker's own rules, with a store and a local control of our own (the buckets and the
real processes are tests/integration/test_cluster*.py's): what it stops, records and claims."""

from __future__ import annotations

import asyncio
from fractions import Fraction
from typing import Any

from pipeline.cluster.store import ENDED, Lease, LeaseLost
from pipeline.cluster.worker import ClusterWorker
from pipeline.control import StreamSpec
from pipeline.stats import StreamStats
from stages.ingest.file import FileSource

LEASE_S = 8.0  # a tick of 2 s


class FakeStore:
    def __init__(self) -> None:
        self.catalog: dict[str, dict[str, Any]] = {}
        self.leases: dict[str, Lease] = {}
        self.workers = {"me"}
        self.renew_error: Exception | None = None
        self.revision = 0
        self.progress_of: dict[str, dict[str, Any]] = {}
        self.checkpoints = 0

    async def checkpoint(self, stream_id: str, record: dict[str, Any]) -> None:
        self.progress_of[stream_id] = record
        self.checkpoints += 1

    async def progress(self, stream_id: str) -> dict[str, Any] | None:
        return self.progress_of.get(stream_id)

    async def forget_progress(self, stream_id: str) -> None:
        self.progress_of.pop(stream_id, None)

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
        self.added: list[StreamSpec] = []

    def is_running(self, stream_id: str) -> bool:
        return stream_id in self.running

    def failure(self, stream_id: str) -> str | None:
        return self.failed.get(stream_id)

    async def add(self, spec: StreamSpec) -> None:
        self.running.add(spec.id)
        self.added.append(spec)

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


async def test_a_renewal_that_never_answers_does_not_keep_the_stream_past_its_lease() -> None:
    """NATS gone: a call waits for its timeout. The fence stops the stream on time regardless, and
    a renewal that answers after that does not bring the lease back."""
    worker, store, local, clock, _ = make_worker()
    store.catalog = {"a": {"uri": "a.mp4"}}
    await worker.step()
    answer = asyncio.Event()
    renew = store.renew

    async def slow_renew(lease: Lease) -> Lease:
        await answer.wait()
        return await renew(lease)

    store.renew = slow_renew  # type: ignore[method-assign]
    worker.tick_s = 60.0  # the round's own timeout is far off: only the fence can stop it in time
    renewing = asyncio.create_task(worker._renew_all())
    await asyncio.sleep(0)
    clock.now += LEASE_S - LEASE_S / 4 + 0.1  # now the others may see the lease expired
    await worker._stop_expired()
    assert local.removed == ["a"] and worker.leases == {}
    answer.set()  # the renewal gets through after all
    await renewing
    assert worker.leases == {} and local.running == set()
    assert store.leases == {}  # and given up: another worker may take the stream at once


async def test_a_stop_asked_while_a_round_runs_is_not_lost() -> None:
    """It was: the poke was cleared after the round, so leaving (SIGTERM) waited a whole tick
    before the leases were given up."""
    worker, store, _, _, _ = make_worker()
    worker.tick_s = 3600.0  # a lost poke would wait this long: the hang guard below fails first
    heartbeat = store.heartbeat

    async def stop_during_the_round(worker_id: str, info: dict[str, Any]) -> None:
        worker.stop()  # as Membership.leave does, while a round is under way
        await heartbeat(worker_id, info)

    store.heartbeat = stop_during_the_round  # type: ignore[method-assign]
    await asyncio.wait_for(worker.run(), 10.0)


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


# --- checkpoints -----------------------------------------------------------------------------------


async def test_it_checkpoints_where_a_file_stream_got_to_once_it_moves_on() -> None:
    worker, store, _, _, _ = make_worker()
    store.catalog = {"a": {"uri": "a.mp4", "run": "r1"}, "live": {"uri": "rtsp://cam/1", "run": "r2"}}
    await worker.step()
    assert store.progress_of == {}  # nothing sent yet: nothing to resume from
    worker.stats.stream("a").published_to = Fraction(51, 25)
    worker.stats.stream("live").published_to = Fraction(9)
    await worker.step()
    assert set(store.progress_of) == {"a"}  # a live stream resumes at the live edge
    assert store.progress_of["a"] | {"time": 0} == {"run": "r1", "at_s": 2.04, "owner": "me", "epoch": 1, "time": 0}
    await worker.step()
    assert store.checkpoints == 1  # not put again while it stands still
    worker.stats.stream("a").published_to = Fraction(3)
    await worker.step()
    assert store.checkpoints == 2 and store.progress_of["a"]["at_s"] == 3.0


async def test_a_new_owner_resumes_a_file_stream_of_the_same_run_at_its_checkpoint() -> None:
    assert FileSource.resumable  # registered: the worker tells a file by the source its URI picks
    worker, store, local, _, events = make_worker()
    store.catalog = {
        "same": {"uri": "a.mp4", "run": "r1", "options": {"loop": True}},
        "other_run": {"uri": "b.mp4", "run": "r2"},  # removed and added again since
        "live": {"uri": "rtsp://cam/x", "run": "r3"},  # a live stream resumes at the live edge
    }
    store.progress_of = {sid: {"run": "r1", "at_s": 12.5} for sid in ("same", "other_run", "live")}
    await worker.step()
    options = {spec.id: spec.options for spec in local.added}
    assert options == {"same": {"loop": True, "start_s": 12.5}, "other_run": {}, "live": {}}
    assert store.catalog["same"]["options"] == {"loop": True}  # the catalog keeps what was asked
    resumed = {sid: event.get("resume_s") for sid, event in events}
    assert resumed == {"same": 12.5, "other_run": None, "live": None}
    assert worker.stats.stream("same").run == "r1"  # its results carry the catalog's run


async def test_a_stream_that_ended_has_its_checkpoint_forgotten() -> None:
    worker, store, local, _, _ = make_worker()
    store.catalog = {"a": {"uri": "a.mp4", "run": "r1"}}
    await worker.step()
    worker.stats.stream("a").published_to = Fraction(2)
    await worker.step()
    local.running.clear()
    await worker.step()
    assert store.catalog["a"][ENDED]["state"] == "ended" and store.progress_of == {}
