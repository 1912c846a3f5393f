"""Checkpoints: where each file stream a worker runs got to (the media time of its latest result
sent), in the ``sg-<name>-progress`` bucket, so a new owner of the same run resumes it there
(``start_s``) instead of from the beginning. A live stream has none: it resumes at the live edge."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from ..errors import ConfigError
from ..stage import source_class_for_uri
from ..stats import StreamStats
from .store import ClusterStore, Lease

log = logging.getLogger("streamgraph.cluster")


class Checkpoints:
    def __init__(self, store: ClusterStore, stats: StreamStats, worker_id: str, tick_s: float) -> None:
        self.store = store
        self.stats = stats
        self.worker_id = worker_id
        self.tick_s = tick_s
        self._put: dict[str, Fraction] = {}
        """Each stream's media time last put from here: put again only once it moved on."""

    async def resume_point(self, stream_id: str, spec: dict[str, Any]) -> float | None:
        """Where a file stream of this run was checkpointed, if anywhere."""
        if spec.get("run") is None or not resumable(spec["uri"]):
            return None
        try:
            progress = await self.store.progress(stream_id)
        except Exception as exc:  # NATS away: from the start (duplicates, never a gap)
            log.warning("cluster worker %s: stream %s: no checkpoint read (%s)", self.worker_id, stream_id, exc)
            return None
        if progress is None or progress.get("run") != spec["run"] or not progress.get("at_s"):
            return None
        return float(progress["at_s"])

    async def put_all(self, leases: Mapping[str, Lease], catalog: Mapping[str, dict[str, Any]]) -> None:
        """Put where each file stream held here got to, if it moved on: all at once, each for at
        most a tick. One that fails is put again next tick."""
        due: dict[str, tuple[Fraction, dict[str, Any]]] = {}
        for stream_id, lease in leases.items():
            spec = catalog.get(stream_id, {})
            at = self.stats.stream(stream_id).published_to
            if at is None or self._put.get(stream_id) == at or spec.get("run") is None:
                continue
            if not resumable(spec["uri"]):
                continue  # a live stream resumes at the live edge: nothing to keep
            record = {"run": spec["run"], "at_s": float(at), "owner": self.worker_id, "epoch": lease.epoch}
            due[stream_id] = at, {**record, "time": round(time.time(), 3)}
        put = await asyncio.gather(
            *(asyncio.wait_for(self.store.checkpoint(sid, record), self.tick_s) for sid, (_, record) in due.items()),
            return_exceptions=True,
        )
        for (stream_id, (at, _)), outcome in zip(due.items(), put, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("cluster worker %s: stream %s: checkpoint not put (%r)", self.worker_id, stream_id, outcome)
            elif stream_id in leases:
                self._put[stream_id] = at

    def forget(self, stream_id: str) -> None:
        self._put.pop(stream_id, None)


def resumable(uri: str) -> bool:
    """Whether a stream of ``uri`` can start part-way (a file: ``start_s``)."""
    try:
        return source_class_for_uri(uri).resumable
    except ConfigError:
        return False
