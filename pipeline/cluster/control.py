"""The stream operations of a cluster worker, for its HTTP API and NATS control subjects.

Any worker takes a request; the catalog, which every worker shares, is the truth:

* ``add`` checks the stream here (its id, URI, options, media roots, that its file exists), then
  creates its catalog entry (only if no stream of that id is there: ``StreamExists``); a worker
  claims it within a tick (this one is poked to look at once);
* ``remove`` deletes the entry; its owner stops it within a tick, wherever it runs;
* ``list`` shows every stream of the cluster as of the last tick: ``owner`` (a worker id, or none
  while it waits for one), ``state`` (``pending``, ``running``, ``ended``, ``failed`` with its
  ``error``) and ``since`` (Unix time). Streams this worker runs outside the catalog (WHIP
  publishers, which connect to one worker) are listed too, owned by it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..control import StreamControl, StreamExists, StreamNotFound, StreamSpec, find_stream
from ..results import new_run_id
from .store import ENDED, ClusterStore
from .worker import ClusterWorker

REMOVE_POLL_S = 0.2


class ClusterControl:
    def __init__(self, local: StreamControl, worker: ClusterWorker, store: ClusterStore) -> None:
        self._local = local
        self._worker = worker
        self._store = store

    @property
    def available(self) -> bool:
        return self._local.available

    def check_id(self, stream_id: str) -> None:
        self._local.check_id(stream_id)

    def parse(self, body: Any) -> StreamSpec:
        return self._local.parse(body)

    def is_running(self, stream_id: str) -> bool:
        spec = self._worker.view.catalog.get(stream_id)
        return (spec is not None and ENDED not in spec) or self._local.is_running(stream_id)

    def failure(self, stream_id: str) -> str | None:
        ended = self._worker.view.catalog.get(stream_id, {}).get(ENDED)
        if ended is not None and ended.get("state") == "failed":
            return str(ended.get("error", ""))
        return self._local.failure(stream_id)

    async def add(self, spec: StreamSpec) -> None:
        self._local.check(spec)
        # ``run``: the same under every owner, so one frame's results keep one message id.
        entry = {"uri": spec.uri, "options": spec.options, "added_at": round(time.time(), 3), "run": new_run_id()}
        if spec.source is not None:
            entry["source"] = spec.source
        async with self._worker.lock:
            if not await self._store.create_stream(spec.id, entry):
                raise StreamExists(f"stream {spec.id!r} already exists in the cluster")
            await self._worker.refresh_locked()
            # A replicated bucket may answer a read from a replica a moment behind: what was
            # just written is known here without asking.
            self._worker.view.catalog[spec.id] = entry
        await self._worker.notify()

    async def remove(self, stream_id: str) -> None:
        self.check_id(stream_id)
        await self._worker.refresh()
        if stream_id not in self._worker.view.catalog:
            if self._local.is_running(stream_id) or self._local.failure(stream_id) is not None:
                await self._local.remove(stream_id)  # one of this worker's own (WHIP)
                return
            raise StreamNotFound(f"no stream {stream_id!r}")
        async with self._worker.lock:
            await self._store.remove_stream(stream_id)
            await self._worker.refresh_locked()
            self._worker.view.catalog.pop(stream_id, None)
        await self._worker.notify()
        await self._until_unowned(stream_id)

    async def _until_unowned(self, stream_id: str) -> None:
        """Wait until the stream's owner has stopped it (its lease is gone), for at most a lease
        period: the owner looks every tick, and a dead owner's lease expires."""
        deadline = time.monotonic() + self._worker.lease_s
        while await self._store.owner(stream_id) is not None and time.monotonic() < deadline:
            await asyncio.sleep(REMOVE_POLL_S)

    def describe(self, stream_id: str) -> dict[str, Any]:
        self.check_id(stream_id)
        return find_stream(self.list(), stream_id)

    def list(self) -> list[dict[str, Any]]:
        view = self._worker.view
        listed = []
        for stream_id, spec in sorted(view.catalog.items()):
            lease = view.owners.get(stream_id)
            ended = spec.get(ENDED)
            stream: dict[str, Any] = {"id": stream_id, "uri": spec["uri"]}
            if ended is not None:
                stream.update(state=ended["state"], owner=ended.get("worker"), since=ended.get("at"))
                if "error" in ended:
                    stream["error"] = ended["error"]
            elif lease is not None and lease.worker in view.live:
                stream.update(state="running", owner=lease.worker, epoch=lease.epoch, since=lease.since)
            else:
                stream.update(state="pending", owner=None, since=spec.get("added_at"))
            listed.append(stream)
        from_catalog = set(view.catalog) | set(self._worker.leases)
        for stream in self._local.list():
            if stream["id"] not in from_catalog:
                listed.append({**stream, "owner": self._worker.worker_id})
        return listed
