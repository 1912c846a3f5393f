"""The cluster's shared state, in three JetStream key-value buckets named after the cluster.

* ``sg-<name>-catalog``: the streams the cluster should run (key: stream id; value: its spec as JSON).
* ``sg-<name>-workers``: one key per live worker, re-put every few seconds; the bucket's age limit
  (``lease_s``) removes a worker that stopped.
* ``sg-<name>-owners``: one key per owned stream; the value names the worker and the lease's
  ``epoch``. A claim creates the key (only if absent), a renewal rewrites it by compare-and-set on
  the revision last seen, a release deletes it the same way; the age limit (``lease_s``) removes
  a lease nobody renewed, so a dead worker's streams become free without any clock of ours.

The epoch is the revision the claim got: it stays the same while the lease is renewed and grows
with every new claim of the stream, so a consumer can drop results stamped with an older epoch
than the newest it has seen (fencing). NATS replicates the buckets (Raft) when ``replicas`` > 1.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, KeyDeletedError, KeyWrongLastSequenceError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

from ..errors import PipelineError

WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code for a compare-and-set that found another revision (nats-py raises it as
``KeyWrongLastSequenceError`` from ``update`` and as a plain ``BadRequestError`` from ``delete``)."""


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


def bucket_names(cluster: str) -> tuple[str, str, str]:
    return (f"sg-{cluster}-catalog", f"sg-{cluster}-workers", f"sg-{cluster}-owners")


class ClusterStore:
    """Reads and writes the three buckets of one cluster."""

    def __init__(self, catalog: KeyValue, workers: KeyValue, owners: KeyValue) -> None:
        self._catalog = catalog
        self._workers = workers
        self._owners = owners

    @classmethod
    async def open(cls, js: JetStreamContext, cluster: str, *, lease_s: float, replicas: int = 1) -> ClusterStore:
        """The cluster's buckets, created if absent (the same settings on every worker)."""
        catalog, workers, owners = bucket_names(cluster)
        return cls(
            await js.create_key_value(bucket=catalog, history=1, replicas=replicas),
            await js.create_key_value(bucket=workers, history=1, ttl=lease_s, replicas=replicas),
            await js.create_key_value(bucket=owners, history=1, ttl=lease_s, replicas=replicas),
        )

    # --- the catalog -----------------------------------------------------------------------------

    async def create_stream(self, stream_id: str, spec: dict[str, Any]) -> bool:
        """Add the stream to the catalog; False if a stream of that id is there already."""
        try:
            await self._catalog.create(stream_id, json.dumps(spec).encode())
        except BadRequestError as exc:
            if not _wrong_last(exc):
                raise
            return False
        return True

    async def put_stream(self, stream_id: str, spec: dict[str, Any]) -> None:
        await self._catalog.put(stream_id, json.dumps(spec).encode())

    async def remove_stream(self, stream_id: str) -> None:
        await self._catalog.delete(stream_id)

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
        return sorted(await _keys(self._workers))

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
        try:
            revision = await self._owners.create(stream_id, _owner_record(worker, 0, since))
        except BadRequestError as exc:
            if not _wrong_last(exc):
                raise
            return None
        # The epoch is the claim's own revision; written into the record so readers see it.
        lease = Lease(stream_id, worker, epoch=revision, revision=revision, since=since)
        return await self.renew(lease)

    async def renew(self, lease: Lease) -> Lease:
        """Rewrite the lease (its age starts again); ``LeaseLost`` if it is no longer this one."""
        try:
            revision = await self._owners.update(
                lease.stream_id, _owner_record(lease.worker, lease.epoch, lease.since), last=lease.revision
            )
        except (BadRequestError, NotFoundError) as exc:
            if isinstance(exc, BadRequestError) and not _wrong_last(exc):
                raise
            current = (await self.owners()).get(lease.stream_id)
            if current is not None and (current.worker, current.epoch) == (lease.worker, lease.epoch):
                # Still ours: an earlier renewal went through but its answer was lost (a server
                # failing over); carry on from the revision it wrote.
                return current
            raise LeaseLost(f"stream {lease.stream_id}: the lease of epoch {lease.epoch} is gone") from None
        return Lease(lease.stream_id, lease.worker, lease.epoch, revision, lease.since)

    async def release(self, lease: Lease) -> bool:
        """Give the lease up (others may claim at once); False if it was not this one any more."""
        try:
            await self._owners.delete(lease.stream_id, last=lease.revision)
        except (BadRequestError, NotFoundError) as exc:
            if isinstance(exc, BadRequestError) and not _wrong_last(exc):
                raise
            return False
        return True

    async def owners(self) -> dict[str, Lease]:
        """Every stream's current lease."""
        leases: dict[str, Lease] = {}
        for key in await _keys(self._owners):
            try:
                entry = await self._owners.get(key)
            except NotFoundError:
                continue
            if entry.value:
                record = json.loads(entry.value)
                epoch = int(record["epoch"] or entry.revision or 0)
                leases[key] = Lease(key, record["worker"], epoch, entry.revision or 0, float(record.get("since", 0)))
        return leases


def _wrong_last(exc: BadRequestError) -> bool:
    return isinstance(exc, KeyWrongLastSequenceError) or getattr(exc, "err_code", None) == WRONG_LAST_SEQUENCE


def _owner_record(worker: str, epoch: int, since: float) -> bytes:
    return json.dumps({"worker": worker, "epoch": epoch, "since": since}).encode()


async def _keys(bucket: KeyValue) -> list[str]:
    try:
        return list(await bucket.keys())
    except NoKeysError:  # nats-py's answer for an empty bucket
        return []


async def _get(bucket: KeyValue, key: str) -> bytes | None:
    try:
        entry = await bucket.get(key)
    except NotFoundError:
        return None
    return entry.value or None
