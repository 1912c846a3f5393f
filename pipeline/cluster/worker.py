"""One worker of a cluster: beats, claims its share of the catalog, runs what it owns, keeps its
leases, and gives them up.

Every ``tick_s`` (a quarter of ``lease_s``) the worker:

1. renews each of its leases (all at once, each for at most a tick). A renewal that finds the
   lease changed (``LeaseLost``) stops that stream here at once. A renewal that cannot reach
   NATS is retried next tick, but once the last good renewal is older than ``lease_s`` minus a
   tick the lease may have expired for the others, so the stream stops here too (checked by a
   task of its own, the fence, so a round waiting on an unreachable NATS never delays it): two
   workers never run one stream for longer than about one tick;
2. checkpoints its file streams (``progress``: where a new owner resumes them) and puts its
   heartbeat (``workers`` bucket);
3. reads the catalog, the leases and the live workers (``ClusterView``, also what
   ``ClusterControl`` lists);
4. stops streams removed from the catalog, and records in the catalog the end of a stream that
   ended here by itself (its file ended, or it failed), so no worker starts it again;
5. claims what ``placement.plan`` says (the lease first, then the stream starts here under it,
   its results stamped with this worker's id and the lease's epoch, and an ``owner_changed``
   event says who had it and why it moved: ``new``, ``released`` or ``expired``) or gives one
   stream up.

``stop_claiming`` comes before the runner drains: the worker keeps beating and renewing its
leases (its streams are still finishing their frames) but claims, stops and records nothing more.
``release_all`` then ends the loop, leaves the workers bucket and gives every lease up, so other
workers take the streams over at once instead of after ``lease_s`` (and call it a release).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..control import StreamControl, StreamControlError, StreamSpec
from ..stats import StreamStats
from .placement import plan
from .progress import Checkpoints
from .store import ENDED, ClusterStore, Lease, LeaseLost

log = logging.getLogger("streamgraph.cluster")


@dataclass
class ClusterView:
    """What the buckets said at the last tick."""

    catalog: dict[str, dict[str, Any]] = field(default_factory=dict)
    owners: dict[str, Lease] = field(default_factory=dict)
    live: list[str] = field(default_factory=list)


Announce = Callable[[str, dict[str, Any]], None]
"""Publishes an event of a stream: its id, and the event's fields."""


class ClusterWorker:
    def __init__(
        self,
        store: ClusterStore,
        local: StreamControl,
        stats: StreamStats,
        *,
        worker_id: str,
        lease_s: float,
        announce: Announce = lambda stream_id, event: None,
        notify: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``notify``: tells every worker to look now (a stream was freed, handed over, added or
        removed), instead of at its next tick."""
        self.store = store
        self.local = local
        self.stats = stats
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.tick_s = lease_s / 4
        self.view = ClusterView()
        self.leases: dict[str, Lease] = {}
        self._renewed_at: dict[str, float] = {}
        self._stopping = asyncio.Event()
        self._claiming = True
        self._poked = asyncio.Event()
        self.announce = announce
        self._notify = notify
        self._clock = clock
        self.checkpoints = Checkpoints(store, stats, worker_id, self.tick_s)
        self._last_owner: dict[str, str] = {}
        """Each stream's owner when last seen, kept after its lease is gone: who had it."""
        self.lock = asyncio.Lock()
        """Held while the view is read, and by a change to the catalog with the read after it, so
        a read begun before the change never lands after it with what it read."""

    def poke(self) -> None:
        """Look again now (a stream was added or removed here)."""
        self._poked.set()

    async def notify(self) -> None:
        """Make every worker look again now (best effort: else they look at their next tick)."""
        if self._notify is not None:
            with contextlib.suppress(Exception):
                await self._notify()

    def stop_claiming(self) -> None:
        self._claiming = False
        self._poked.set()

    def stop(self) -> None:
        self._claiming = False
        self._stopping.set()
        self._poked.set()

    async def run(self) -> None:
        fence = asyncio.create_task(self._fence(), name=f"fence:{self.worker_id}")
        try:
            while not self._stopping.is_set():
                # Cleared before the round, not after: a poke (or a stop) while the round runs
                # starts the next one at once instead of a tick later.
                self._poked.clear()
                try:
                    await self.step()
                except Exception as exc:  # NATS unreachable, a bucket busy: the next tick tries again
                    # One line a tick while NATS is away; the traceback only when debugging.
                    debugging = log.isEnabledFor(logging.DEBUG)
                    log.warning("cluster worker %s: this round failed: %r", self.worker_id, exc, exc_info=debugging)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poked.wait(), self.tick_s)
        finally:
            fence.cancel()

    async def _fence(self) -> None:
        """Every quarter tick, stop the streams whose leases may have expired for the others. On
        its own task: a round waiting on an unreachable NATS (each call up to its timeout) must
        not keep a stream running past its lease."""
        while not self._stopping.is_set():
            await self._stop_expired()
            await asyncio.sleep(self.tick_s / 4)

    async def step(self) -> None:
        await self._renew_all()
        await self.checkpoints.put_all(self.leases, self.view.catalog)
        await self.store.heartbeat(self.worker_id, {"streams": sorted(self.leases)})
        if not self._claiming:
            return  # draining: its streams end because the run stops, not by themselves
        await self.refresh()
        catalog = self.view.catalog
        for stream_id in list(self.leases):
            if stream_id not in catalog and not await self.store.has_stream(stream_id):
                # Asked again before stopping: one listing that missed a key is not a removal.
                await self._stop_here(stream_id, "removed from the catalog")
            elif not self.local.is_running(stream_id):
                await self._record_end(stream_id)
        active = [sid for sid, spec in catalog.items() if ENDED not in spec]
        await self._take_handed(active)
        owners = {sid: lease.worker for sid, lease in self.view.owners.items()}
        decided = plan(self.worker_id, active, owners, self.view.live)
        won = 0
        for stream_id in decided.claim:
            if won >= decided.room:
                break
            lease = await self.store.claim(stream_id, self.worker_id)
            if lease is not None:
                won += 1
                await self._start(stream_id, catalog[stream_id], lease)
        if decided.release is not None and decided.to is not None:
            await self._hand_over(decided.release, decided.to)

    async def _take_handed(self, active: list[str]) -> None:
        """Streams another worker handed to this one (a rebalance): take them and run them."""
        for stream_id in active:
            handed = self.view.owners.get(stream_id)
            if handed is None or handed.handed_by is None or handed.worker != self.worker_id:
                continue  # not being handed to this worker
            if stream_id in self.leases:
                continue
            lease = await self.store.take_over(handed)
            if lease is not None:
                self._last_owner[stream_id] = handed.handed_by
                await self._start(stream_id, self.view.catalog[stream_id], lease, handed=True)

    async def _hand_over(self, stream_id: str, to: str) -> None:
        await self._stop_here(stream_id, f"handed over to {to} (fewer streams)", to=to)
        await self.notify()

    async def refresh(self) -> ClusterView:
        async with self.lock:
            return await self.refresh_locked()

    async def refresh_locked(self) -> ClusterView:
        """``refresh`` while holding ``lock`` (a change to the catalog and the read after it)."""
        self.view = ClusterView(
            catalog=await self.store.streams(),
            owners=await self.store.owners(),
            live=sorted(set(await self.store.live_workers()) | {self.worker_id}),
        )
        self._last_owner.update({sid: lease.worker for sid, lease in self.view.owners.items()})
        running = {sid for sid, spec in self.view.catalog.items() if ENDED not in spec}
        for stream_id in set(self._last_owner) - running:  # gone, or ended: if added again, it is new
            del self._last_owner[stream_id]
        return self.view

    async def release_all(self) -> None:
        """Leave the cluster and give every lease up (after the runner has stopped the streams).
        Leaving first: a worker that claims one of the streams finds this one gone on purpose."""
        with contextlib.suppress(Exception):
            await self.store.leave(self.worker_id)
        for stream_id, lease in list(self.leases.items()):
            with contextlib.suppress(Exception):
                await self.store.release(lease)
            self._forget(stream_id)
        await self.notify()  # the others take the streams over now, not at their next tick

    async def _start(self, stream_id: str, spec: dict[str, Any], lease: Lease, *, handed: bool = False) -> None:
        options = dict(spec.get("options", {}))
        resume_s = await self.checkpoints.resume_point(stream_id, spec)
        if resume_s is not None:
            options["start_s"] = resume_s
        request = StreamSpec(id=stream_id, uri=spec["uri"], options=options, source=spec.get("source"))
        self.leases[stream_id] = lease
        self._renewed_at[stream_id] = self._clock()
        counters = self.stats.stream(stream_id)
        # Before the stream starts: its first result and event carry them.
        counters.lease, counters.run, counters.published_to = (self.worker_id, lease.epoch), spec.get("run"), None
        try:
            await self.local.add(request)
        except StreamControlError as exc:  # refused here (a file this worker cannot see, say)
            log.error("cluster worker %s: stream %s refused: %s", self.worker_id, stream_id, exc.message)
            await self._end_in_catalog(stream_id, "failed", f"{self.worker_id}: {exc.message}")
            await self._release(stream_id)
            return
        previous = self._last_owner.get(stream_id)
        reason = await self._why_moved(previous, handed=handed)
        self._last_owner[stream_id] = self.worker_id
        log.info(
            "cluster worker %s: runs stream %s (epoch %d; before: %s, %s)",
            self.worker_id,
            stream_id,
            lease.epoch,
            previous or "nobody",
            reason,
        )
        event: dict[str, Any] = {
            "event": "owner_changed",
            "owner": self.worker_id,
            "previous_owner": previous,
            "epoch": lease.epoch,
            "reason": reason,
        }
        if resume_s is not None:
            event["resume_s"] = resume_s
        self.announce(stream_id, event)

    async def _why_moved(self, previous: str | None, *, handed: bool) -> str:
        if previous is None:
            return "new"
        if handed or previous == self.worker_id:
            return "released"  # it gave the stream up (a rebalance)
        # A free lease claimed: its owner released it on leaving (SIGTERM), or it expired. Not
        # "the owner is still listed live": a dead worker's heartbeat outlives its last lease
        # renewal by the moment between the two writes.
        try:
            return "released" if await self.store.left_cleanly(previous) else "expired"
        except Exception:  # not known for sure: the lease did expire for the others
            return "expired"

    async def _renew_all(self) -> None:
        """Renew every lease at once, each for at most a tick. Sent at ``now``: the lease's age
        starts again at the server a little later, so counting from ``now`` is on the safe side."""
        now = self._clock()
        held = list(self.leases.items())
        renewed = await asyncio.gather(
            *(asyncio.wait_for(self.store.renew(lease), self.tick_s) for _, lease in held), return_exceptions=True
        )
        for (stream_id, lease), outcome in zip(held, renewed, strict=True):
            if self.leases.get(stream_id) is not lease:
                # Stopped meanwhile (the fence, a removal): a renewal that got through after all
                # is given up, so another worker need not wait for it to expire.
                if isinstance(outcome, Lease):
                    with contextlib.suppress(Exception):
                        await self.store.release(outcome)
                continue
            if isinstance(outcome, Lease):
                self.leases[stream_id] = outcome
                self._renewed_at[stream_id] = now
            elif isinstance(outcome, LeaseLost):
                await self._stop_here(stream_id, "its lease was lost")
            else:  # NATS unreachable, or too slow: the next tick tries again, until the fence
                log.warning("cluster worker %s: stream %s: renewal failed (%r)", self.worker_id, stream_id, outcome)
        await self._stop_expired()

    async def _stop_expired(self) -> None:
        """Stop each stream whose last good renewal is older than ``lease_s`` minus a tick: others
        may see its lease expired by now, so two workers never run one stream for long. Only
        here: the lease is left to expire (NATS is what could not be reached)."""
        now = self._clock()
        for stream_id, renewed_at in list(self._renewed_at.items()):
            if now - renewed_at > self.lease_s - self.tick_s:
                log.warning("cluster worker %s: stops stream %s: its lease was not renewed", self.worker_id, stream_id)
                self._forget(stream_id)
                with contextlib.suppress(StreamControlError):
                    await self.local.remove(stream_id)

    async def _record_end(self, stream_id: str) -> None:
        """The stream ended here by itself: say so in the catalog (nobody starts it again)."""
        failure = self.local.failure(stream_id)
        state, error = ("failed", failure) if failure is not None else ("ended", None)
        await self._end_in_catalog(stream_id, state, error)
        with contextlib.suppress(Exception):  # nobody resumes it: it ended
            await self.store.forget_progress(stream_id)
        await self._release(stream_id)

    async def _end_in_catalog(self, stream_id: str, state: str, error: str | None) -> None:
        spec = self.view.catalog.get(stream_id)
        if spec is None:
            return
        ended = {"state": state, "at": round(time.time(), 3), "worker": self.worker_id}
        if error is not None:
            ended["error"] = error
        await self.store.put_stream(stream_id, {**spec, ENDED: ended})

    async def _stop_here(self, stream_id: str, why: str, *, to: str | None = None) -> None:
        log.info("cluster worker %s: stops stream %s: %s", self.worker_id, stream_id, why)
        with contextlib.suppress(StreamControlError):
            await self.local.remove(stream_id)
        await self._release(stream_id, to=to)

    async def _release(self, stream_id: str, *, to: str | None = None) -> None:
        """Give the stream's lease up, or hand it to worker ``to``, and forget it."""
        lease = self.leases.get(stream_id)
        if lease is not None:
            with contextlib.suppress(Exception):  # lost already, or NATS away: it expires anyway
                await (self.store.hand_over(lease, to) if to is not None else self.store.release(lease))
        self._forget(stream_id)

    def _forget(self, stream_id: str) -> None:
        self.leases.pop(stream_id, None)
        self._renewed_at.pop(stream_id, None)
        self.checkpoints.forget(stream_id)
