"""The cluster's shared state, in three JetStream key-value buckets named after the cluster.

* ``sg-<name>-catalog``: the streams the cluster should run (key: stream id; value: its spec as JSON).
* ``sg-<name>-workers``: one key per live worker, re-put every few seconds; the bucket's age limit
  (``lease_s``) removes a worker that stopped.
* ``sg-<name>-owners``: one key per owned stream; the value names the worker and the lease's
  ``epoch``. A claim creates the key (only if absent), a renewal rewrites it by compare-and-set on
  the revision last seen, a release deletes it the same way; the age limit (``lease_s``) removes
  a lease nobody renewed, so a dead worker's streams become free without any clock of ours.
* ``sg-<name>-progress``: one key per stream that can resume part-way (a file): its run and the
  media time of its latest result sent, put by its owner every tick; a new owner of the same run
  starts there (``start_s``).

The epoch is the revision the claim got: it stays the same while the lease is renewed and grows
with every new claim of the stream, so a consumer can drop results stamped with an older epoch
than the newest it has seen (fencing). NATS replicates the buckets (Raft) when ``replicas`` > 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
from nats.js.client import JetStreamContext
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    KeyDeletedError,
    KeyWrongLastSequenceError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from ..errors import PipelineError

log = logging.getLogger("streamgraph.cluster")

T = TypeVar("T")

OPEN_RETRY_S = 60.0
"""How long a worker starting while JetStream elects a leader keeps asking for its buckets."""

WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code for a compare-and-set that found another revision (nats-py raises it as
``KeyWrongLastSequenceError`` from ``update`` and as a plain ``BadRequestError`` from ``delete``)."""


ENDED = "ended"
"""The catalog field a stream's end is recorded in (``{"state": "ended" | "failed", ...}``); the id
of a stream that ended may be added again (its entry is replaced)."""


class LeaseLost(PipelineError):
    """A renewal found the lease changed: another worker owns the stream now, or it expired."""


@dataclass(frozen=True)
class Lease:
    stream_id: str
    worker: str
    epoch: int
    """The revision of the claim: the same across renewals, larger for each new claim."""
    revision: int
    """The record's current revision: what the next renewal or release must find."""
    since: float
    """When it was claimed (Unix time, the claiming worker's clock)."""
    handed_by: str | None = None
    """Set while the stream is being handed over: the worker that gave it to ``worker``, which has
    not taken it yet (``take_over``). No other worker may claim it meanwhile; if ``worker`` never
    takes it, the record expires as any lease does."""


def bucket_names(cluster: str) -> tuple[str, str, str, str]:
    return (f"sg-{cluster}-catalog", f"sg-{cluster}-workers", f"sg-{cluster}-owners", f"sg-{cluster}-progress")


class ClusterStore:
    """Reads and writes the four buckets of one cluster."""

    def __init__(self, catalog: KeyValue, workers: KeyValue, owners: KeyValue, progress: KeyValue) -> None:
        self._catalog = catalog
        self._workers = workers
        self._owners = owners
        self._progress = progress

    @classmethod
    async def open(cls, js: JetStreamContext, cluster: str, *, lease_s: float, replicas: int = 1) -> ClusterStore:
        """The cluster's buckets: the existing ones as they are (the first worker made them), else
        created. A worker that joins while a NATS node is down counts fewer servers, so it must
        not insist on its own ``replicas``."""
        catalog, workers, owners, progress = bucket_names(cluster)
        return cls(
            await _bucket(js, catalog, history=1, replicas=replicas),
            await _bucket(js, workers, history=1, ttl=lease_s, replicas=replicas),
            await _bucket(js, owners, history=1, ttl=lease_s, replicas=replicas),
            await _bucket(js, progress, history=1, replicas=replicas),
        )

    # --- the catalog -----------------------------------------------------------------------------

    async def create_stream(self, stream_id: str, spec: dict[str, Any]) -> bool:
        """Add the stream to the catalog; False if a stream of that id is there already, unless it
        ended (its entry is replaced, by compare-and-set: one of two such adds wins)."""
        value = json.dumps(spec).encode()
        if await _compared(self._catalog.create(stream_id, value)) is not None:
            return True
        try:
            entry = await self._catalog.get(stream_id)
        except NotFoundError:
            return False  # removed meanwhile: another add is on its way; this one lost
        if not entry.value or ENDED not in json.loads(entry.value):
            return False
        return await _compared(self._catalog.update(stream_id, value, last=entry.revision)) is not None

    async def has_stream(self, stream_id: str) -> bool:
        return await _get(self._catalog, stream_id) is not None

    async def put_stream(self, stream_id: str, spec: dict[str, Any]) -> None:
        await self._catalog.put(stream_id, json.dumps(spec).encode())

    async def remove_stream(self, stream_id: str) -> None:
        await self._catalog.delete(stream_id)
        await self.forget_progress(stream_id)

    # --- progress --------------------------------------------------------------------------------

    async def checkpoint(self, stream_id: str, record: dict[str, Any]) -> None:
        await self._progress.put(stream_id, json.dumps(record).encode())

    async def progress(self, stream_id: str) -> dict[str, Any] | None:
        value = await _get(self._progress, stream_id)
        return json.loads(value) if value is not None else None

    async def forget_progress(self, stream_id: str) -> None:
        await self._progress.delete(stream_id)

    async def streams(self) -> dict[str, dict[str, Any]]:
        specs: dict[str, dict[str, Any]] = {}
        for key in await _keys(self._catalog):
            entry = await _get(self._catalog, key)
            if entry is not None:
                specs[key] = json.loads(entry)
        return specs

    # --- live workers ----------------------------------------------------------------------------

    async def heartbeat(self, worker: str, info: dict[str, Any]) -> None:
        await self._workers.put(worker, json.dumps(info).encode())

    async def leave(self, worker: str) -> None:
        await self._workers.delete(worker)

    async def live_workers(self) -> list[str]:
        return [key for key in await _keys(self._workers) if await _get(self._workers, key) is not None]

    async def left_cleanly(self, worker: str) -> bool:
        """Whether ``worker`` left (``leave``: its key deleted) rather than stopped beating (its
        key aged out): a release, not an expiry. Told only while the bucket keeps the marker
        (``lease_s``)."""
        try:
            await self._workers.get(worker)
        except NotFoundError as exc:
            # nats-py reports a deleted key as not found, with the delete marker as its ``entry``.
            return isinstance(exc, KeyDeletedError) or getattr(exc, "entry", None) is not None
        return False

    # --- leases ----------------------------------------------------------------------------------

    async def claim(self, stream_id: str, worker: str) -> Lease | None:
        """The stream's lease for ``worker``, or None if another worker holds it."""
        since = round(time.time(), 3)
        revision = await _compared(self._owners.create(stream_id, _owner_record(worker, 0, since)))
        if revision is None:
            return None
        # The epoch is the claim's own revision; written into the record so readers see it.
        lease = Lease(stream_id, worker, epoch=revision, revision=revision, since=since)
        return await self.renew(lease)

    async def hand_over(self, lease: Lease, to: str) -> bool:
        """Give the stream to worker ``to`` (a rebalance): only it may take it now. False if the
        lease was not this one any more."""
        record = json.dumps({"worker": to, "epoch": 0, "since": round(time.time(), 3), "from": lease.worker})
        return await _compared(self._owners.update(lease.stream_id, record.encode(), last=lease.revision)) is not None

    async def take_over(self, handed: Lease) -> Lease | None:
        """Take a stream handed to this worker (``hand_over``): a lease of a new epoch, or None if
        the record changed meanwhile (it expired and another worker claimed it)."""
        since = round(time.time(), 3)
        record = _owner_record(handed.worker, 0, since)
        revision = await _compared(self._owners.update(handed.stream_id, record, last=handed.revision))
        if revision is None:
            return None
        return await self.renew(Lease(handed.stream_id, handed.worker, revision, revision, since))

    async def renew(self, lease: Lease) -> Lease:
        """Rewrite the lease (its age starts again); ``LeaseLost`` if it is no longer this one."""
        record = _owner_record(lease.worker, lease.epoch, lease.since)
        revision = await _compared(self._owners.update(lease.stream_id, record, last=lease.revision))
        if revision is not None:
            return Lease(lease.stream_id, lease.worker, lease.epoch, revision, lease.since)
        current = await self.owner(lease.stream_id)
        if current is not None and (current.worker, current.epoch) == (lease.worker, lease.epoch):
            # Still ours: an earlier renewal went through but its answer was lost (a server
            # failing over); carry on from the revision it wrote.
            return current
        raise LeaseLost(f"stream {lease.stream_id}: the lease of epoch {lease.epoch} is gone")

    async def release(self, lease: Lease) -> bool:
        """Give the lease up (others may claim at once); False if it was not this one any more."""
        return await _compared(self._owners.delete(lease.stream_id, last=lease.revision)) is not None

    async def owners(self) -> dict[str, Lease]:
        """Every stream's current lease."""
        leases = {key: await self.owner(key) for key in await _keys(self._owners)}
        return {key: lease for key, lease in leases.items() if lease is not None}

    async def owner(self, stream_id: str) -> Lease | None:
        """The stream's current lease, or None."""
        try:
            entry = await self._owners.get(stream_id)
        except NotFoundError:
            return None
        if not entry.value:
            return None
        record = json.loads(entry.value)
        epoch = int(record["epoch"] or entry.revision or 0)
        since = float(record.get("since", 0))
        return Lease(stream_id, record["worker"], epoch, entry.revision or 0, since, record.get("from"))


async def _bucket(js: JetStreamContext, name: str, **config: Any) -> KeyValue:
    """The bucket ``name``, created with ``config`` if there is none yet. While JetStream does not
    answer (electing a leader after a node died: a timeout, a 503) it is asked again, for up to
    ``OPEN_RETRY_S``."""
    deadline = time.monotonic() + OPEN_RETRY_S
    delay = 0.25
    while True:
        try:
            return await _bucket_once(js, name, config)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, ServiceUnavailableError):
            if time.monotonic() + delay > deadline:
                raise
            log.info("bucket %s: JetStream does not answer yet; asking again in %.1f s", name, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 4.0)


async def _bucket_once(js: JetStreamContext, name: str, config: dict[str, Any]) -> KeyValue:
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(bucket=name, **config)
    except BadRequestError:  # another worker created it meanwhile, maybe with other replicas
        return await js.key_value(name)


async def _compared(write: Awaitable[T]) -> T | None:
    """What a compare-and-set write (a create, an update or a delete with ``last``) returned, or
    None if it found another revision than the one it expected, or no key."""
    try:
        return await write
    except NotFoundError:
        return None
    except BadRequestError as exc:
        if isinstance(exc, KeyWrongLastSequenceError) or getattr(exc, "err_code", None) == WRONG_LAST_SEQUENCE:
            return None
        raise


def _owner_record(worker: str, epoch: int, since: float) -> bytes:
    return json.dumps({"worker": worker, "epoch": epoch, "since": since}).encode()


async def _keys(bucket: KeyValue) -> list[str]:
    """The keys of ``bucket`` that have a message (a value, or a delete marker that ``get`` then
    skips), from one stream-info request. Not ``KeyValue.keys``: that creates and deletes a
    consumer on every call, and every worker reading three buckets every tick that way loaded
    JetStream enough (on a NATS cluster, on two cores) for lease renewals to time out."""
    # nats-py keeps the bucket's stream, subject prefix and JetStream context on the KeyValue.
    js, stream, prefix = bucket._js, bucket._stream, bucket._pre
    info = await js.stream_info(stream, subjects_filter=f"{prefix}>")
    return sorted(subject.removeprefix(prefix) for subject in (info.state.subjects or {}))


async def _get(bucket: KeyValue, key: str) -> bytes | None:
    try:
        entry = await bucket.get(key)
    except NotFoundError:
        return None
    return entry.value or None
