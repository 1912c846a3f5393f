"""Per-stream counters that every stage updates and that results, summaries and metrics read."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from .media import Item


@dataclass(slots=True)
class StreamCounters:
    """What happened to one stream's frames. ``drops`` is keyed by where they were dropped.

    Every decoded item (a video frame, an audio window) ends up exactly once as published,
    dropped or consumed, so ``decoded == published + dropped + consumed`` once a stream is done.
    """

    decoded: int = 0
    published: int = 0
    consumed: int = 0
    """Decoded items a stage used up on purpose without passing them on (audio windows that
    ``speech_segments`` folded into a segment): not lost, so not drops."""
    drops: dict[str, int] = field(default_factory=dict)
    """Decoded frames dropped, by where: ``edge:<stage>``, ``shutdown``, ``error:<stage>``,
    ``stream_error`` (the frame a stage gave up on the stream at), ``failed:<stage>``."""
    packets_dropped: int = 0
    """Compressed packets discarded before decoding (at shutdown, or by a full edge)."""
    reconnects: int = 0
    """Times a live source connected again after losing its stream (``rtsp``)."""
    frame_count: int | None = None
    error: str | None = None
    ended: bool = False
    added_at_run_time: bool = False
    """Added while the pipeline ran (HTTP API, NATS control), not declared in the config file: its
    failure is that stream's own, never the run's (``streamgraph run`` exits 0 for it)."""
    lease: tuple[str, int] | None = None
    """In a cluster: (this worker's id, the lease's epoch) under which it runs the stream; stamped
    on every result (``owner``, ``epoch``)."""
    run: str | None = None
    """In a cluster: the stream's run as its catalog entry names it, the same under every owner
    (results carry it as ``run``; message ids of a file stream's results derive from it)."""
    published_to: Fraction | None = None
    """Media time (s) of the latest result sent (acknowledged on JetStream): where a new owner
    resumes the stream (a cluster checkpoints it)."""

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    @property
    def settled(self) -> bool:
        """Every decoded item is published, dropped or consumed: nothing of it is on its way."""
        return self.decoded == self.published + self.dropped + self.consumed

    def fold(self, other: StreamCounters) -> None:
        """Add ``other``'s counts to these."""
        self.decoded += other.decoded
        self.published += other.published
        self.consumed += other.consumed
        for where, count in other.drops.items():
            self.drops[where] = self.drops.get(where, 0) + count
        self.packets_dropped += other.packets_dropped
        self.reconnects += other.reconnects


KEEP_ENDED_STREAMS = 1000
"""Ended streams added at run time whose own counters are kept (``/metrics``, the summary's list
of failures). Older ones are folded into ``StreamStats.retired``: a service whose streams come and
go (WebRTC sessions, churned cameras) keeps bounded memory, and its totals stay whole."""


class StreamStats:
    """All streams' counters, created on first use. Only touched from the event loop."""

    def __init__(self, *, keep_ended: int = KEEP_ENDED_STREAMS) -> None:
        self._streams: dict[str, StreamCounters] = {}
        self._keep_ended = keep_ended
        self.retired = StreamCounters()
        """The summed counts of the streams no longer kept one by one."""
        self.retired_streams = 0

    def stream(self, stream_id: str) -> StreamCounters:
        counters = self._streams.get(stream_id)
        if counters is None:
            self._retire_old()
            counters = self._streams[stream_id] = StreamCounters()
        return counters

    def _retire_old(self) -> None:
        """Fold the oldest ended run-time streams beyond ``keep_ended`` into ``retired``. Only
        those settled (nothing of theirs still on its way) and never a stream of the config file
        (its failure decides the run's exit code)."""
        retirable = [
            stream_id
            for stream_id, counters in self._streams.items()
            if counters.ended and counters.added_at_run_time and counters.settled
        ]
        for stream_id in retirable[: max(0, len(retirable) - self._keep_ended)]:
            self.retired.fold(self._streams.pop(stream_id))
            self.retired_streams += 1

    @property
    def stream_count(self) -> int:
        """Streams seen in this run, retired ones included."""
        return len(self._streams) + self.retired_streams

    def count_drop(self, stream_id: str, where: str, count: int = 1) -> None:
        drops = self.stream(stream_id).drops
        drops[where] = drops.get(where, 0) + count

    def drop_item(self, item: Item, where: str) -> None:
        """Count one lost item: a frame (seq >= 0) by where it was lost, a packet apart."""
        if item.seq >= 0:
            self.count_drop(item.stream_id, where)
        else:
            self.stream(item.stream_id).packets_dropped += 1

    def items(self) -> list[tuple[str, StreamCounters]]:
        return list(self._streams.items())

    def _all(self) -> list[StreamCounters]:
        return [*self._streams.values(), self.retired]

    @property
    def decoded(self) -> int:
        return sum(c.decoded for c in self._all())

    @property
    def published(self) -> int:
        return sum(c.published for c in self._all())

    @property
    def dropped(self) -> int:
        return sum(c.dropped for c in self._all())

    @property
    def consumed(self) -> int:
        return sum(c.consumed for c in self._all())

    def drops_by_reason(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for counters in self._all():
            for where, count in counters.drops.items():
                totals[where] = totals.get(where, 0) + count
        return totals
