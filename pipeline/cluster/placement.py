"""Who runs which stream: each worker's fair share, and what one worker should claim or give up.

Pure functions of what the buckets say, so every worker decides the same way on the same facts,
and the rules are tested without a cluster. The rules:

* a worker's share is ``ceil(streams / live workers)``; a worker claims unowned streams (new ones,
  or a dead worker's) while it owns fewer than that and no live worker owns fewer than it, so a
  dead worker's streams spread over the rest and the neediest are served first;
* churn is bounded: with nothing unowned, a worker gives one stream up when it owns more than an
  even split's floor (``streams // workers``) and some live worker owns at least two fewer than it
  (a joining worker, say), so a stream never moves to fix an imbalance of one (no ping-pong), each
  decision moves one stream, and a joining worker takes about its share from the others.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass


def fair_share(streams: int, workers: int) -> int:
    """The most streams one of ``workers`` live workers should own (0 with no worker)."""
    return math.ceil(streams / workers) if workers > 0 else 0


@dataclass(frozen=True)
class Plan:
    """What one worker should do now."""

    claim: tuple[str, ...] = ()
    """Unowned streams to try, in this worker's order, until ``room`` of them are won (another
    worker may win some: the next ones are tried instead)."""
    room: int = 0
    """How many streams to claim at most."""
    release: str | None = None
    """One stream of its own to give up, so a worker with fewer can take it."""
    to: str | None = None
    """The worker to hand ``release`` to: the one owning the fewest (ties: the first by id)."""


def _rotated(streams: list[str], me: str) -> tuple[str, ...]:
    """``streams`` starting at a place of ``me``'s own: workers claiming at once mostly try
    different streams first instead of racing for the same ones."""
    start = zlib.crc32(me.encode()) % len(streams)
    return tuple(streams[start:] + streams[:start])


def plan(me: str, catalog: Collection[str], owners: Mapping[str, str], live: Collection[str]) -> Plan:
    """``me``'s next step, given the streams of the catalog, each owned stream's owner and the
    live workers (``me`` counts as live)."""
    workers = set(live) | {me}
    owned_by: dict[str, list[str]] = {worker: [] for worker in workers}
    for stream_id in sorted(catalog):
        owner = owners.get(stream_id)
        if owner in owned_by:
            owned_by[owner].append(stream_id)
    share = fair_share(len(catalog), len(workers))
    mine = owned_by[me]
    fewest = min(len(streams) for streams in owned_by.values())
    unowned = sorted(s for s in catalog if owners.get(s) not in owned_by)  # none yet, or a dead worker's
    if unowned:
        # The workers owning the fewest go first: a worker that just gave a stream up does not
        # take it back while the one it made room for has less.
        if len(mine) < share and len(mine) == fewest:
            return Plan(claim=_rotated(unowned, me), room=share - len(mine))
        return Plan()
    # Above the floor of an even split only: a worker that gave one up while the newcomer was
    # still claiming does not give up another (each of them moves once, and only as many as needed).
    if len(mine) > len(catalog) // len(workers) and len(mine) - fewest >= 2:
        neediest = min(owned_by, key=lambda worker: (len(owned_by[worker]), worker))
        return Plan(release=mine[-1], to=neediest)
    return Plan()
