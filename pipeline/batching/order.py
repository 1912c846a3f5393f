"""Which streams' requests make the next batch: the batcher's fairness policy.

Round-robin over streams, one request per stream per round, the streams that waited longest
first, so a flooding stream cannot starve a slow one. Where every waiting request has a capture
time (live streams, latency budgets), the first round takes the freshest frames among the streams
whose turn it is (``first_round``), with a growing credit for a stream left behind, so none waits
more than about two rounds.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Hashable
from typing import Generic

from .requests import P, Request

Queues = OrderedDict[str, deque[Request[P]]]
"""Each stream's waiting requests, streams in the order they are to be served."""


class StreamOrder(Generic[P]):
    """The order state across batches: how many streams have been served, when each was last
    served, and how many were served past each one whose request waited."""

    def __init__(self, *, one_per_stream: bool) -> None:
        self.one_per_stream = one_per_stream
        self._served_streams = 0
        """Streams served so far (a stream counts once per batch)."""
        self._last_served: dict[str, int] = {}
        """``_served_streams`` when each stream was last served."""
        self._passed_over: dict[str, int] = {}
        """Streams served while a stream's request waited, since its last turn (a round is every
        stream once)."""

    def forget(self, stream_id: str) -> None:
        self._passed_over.pop(stream_id, None)
        self._last_served.pop(stream_id, None)

    def take(self, queues: Queues[P], group: Hashable, size: int) -> list[Request[P]]:
        """Up to ``size`` requests of ``group``, removed from ``queues``: round-robin over streams,
        one request per stream per round, oldest streams first (with capture times, the freshest
        of the streams that waited longest: ``first_round``). Served streams go to the back."""
        batch: list[Request[P]] = []
        served: list[str] = []
        while len(batch) < size:
            took = False
            for stream_id in self.first_round(queues, group, size) if not served else list(queues):
                queue = queues[stream_id]
                if len(batch) >= size:
                    break
                request = self.next_of(queue, group, first_round=stream_id not in served)
                if request is None:
                    continue
                queue.remove(request)
                batch.append(request)
                served.append(stream_id)
                took = True
            if not took or self.one_per_stream:
                break
        first_round = set(served)
        for stream_id, queue in queues.items():
            if stream_id not in first_round and self.next_of(queue, group, first_round=True) is not None:
                self._passed_over[stream_id] = self._passed_over.get(stream_id, 0) + len(first_round)
        # Streams served go to the back: the next batch starts with the ones that waited. (An
        # emptied queue stays: the order is every stream's, until the stream is forgotten.)
        self._served_streams += len(first_round)
        for stream_id in dict.fromkeys(served):
            self._passed_over.pop(stream_id, None)
            self._last_served[stream_id] = self._served_streams
            queues.move_to_end(stream_id)
        return batch

    def first_round(self, queues: Queues[P], group: Hashable, size: int) -> list[str]:
        """The order of streams for a batch's first round. Plain round-robin, unless every waiting
        request of the group has a capture time (live streams, latency budgets): then, of the
        waiting streams in the half of all streams served longest ago (at least ``size``), those
        with the freshest request go first. On a live overload (each stream's newest frame
        waiting, the model taking one now and then) that runs a frame a few ms old instead of one
        up to a frame interval old.

        A stream is not left behind for long: once more than half a round (every stream served
        once) has been served while its request waited, that request counts as fresher by a
        growing share of the spread of the waiting requests' ages. A stream whose frame is always
        the oldest still gets its turn within about two rounds, at any batch size (a unit test).
        The latency budget comes first: a frame too old to finish in time is dropped by the
        batcher, whatever its stream's turn."""
        order = list(queues)
        captured: dict[str, float] = {}
        for stream_id, queue in queues.items():
            head = self.next_of(queue, group, first_round=True)
            if head is not None:
                if head.captured_at is None:
                    return order
                captured[stream_id] = head.captured_at
        waiting = [s for s in order if s in captured]
        if len(waiting) <= size:
            return order
        # The half is of the streams taking part: waiting now, or served within the last round
        # (their next frame is on its way; a stalled stream, idle longer, does not count). One
        # served lately waits for half of them to be served before it can go first again.
        recent = len(order)
        taking_part = [
            s for s in order if s in captured or self._served_streams - self._last_served.get(s, -recent) < recent
        ]
        rounds = len(taking_part)
        older_half = set(taking_part[: math.ceil(rounds / 2)])
        window = [s for s in waiting if s in older_half or self._passed_over.get(s, 0) > rounds / 2]
        window += [s for s in waiting if s not in window][: max(0, size - len(window))]
        spread = max(captured[s] for s in window) - min(captured[s] for s in window)

        def freshness(stream_id: str) -> float:
            behind = max(0.0, self._passed_over.get(stream_id, 0) - rounds / 2) / rounds
            return captured[stream_id] + behind * spread

        first = sorted(window, key=freshness, reverse=True)
        return first + [s for s in order if s not in first]

    def next_of(self, queue: deque[Request[P]], group: Hashable, *, first_round: bool) -> Request[P] | None:
        """The stream's next request of ``group``; with ``one_per_stream``, only its first, and
        only in a batch's first round (a recurrent model's state: one item per stream per run)."""
        if self.one_per_stream:
            return queue[0] if first_round and queue and queue[0].group == group else None
        return next((r for r in queue if r.group == group), None)
