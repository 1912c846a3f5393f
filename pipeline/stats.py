"""Per-stream counters that every stage updates and that results, summaries and metrics read."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())


class StreamStats:
    """All streams' counters, created on first use. Only touched from the event loop."""

    def __init__(self) -> None:
        self._streams: dict[str, StreamCounters] = {}

    def stream(self, stream_id: str) -> StreamCounters:
        counters = self._streams.get(stream_id)
        if counters is None:
            counters = self._streams[stream_id] = StreamCounters()
        return counters

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

    @property
    def decoded(self) -> int:
        return sum(c.decoded for c in self._streams.values())

    @property
    def published(self) -> int:
        return sum(c.published for c in self._streams.values())

    @property
    def dropped(self) -> int:
        return sum(c.dropped for c in self._streams.values())

    @property
    def consumed(self) -> int:
        return sum(c.consumed for c in self._streams.values())

    def drops_by_reason(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for counters in self._streams.values():
            for where, count in counters.drops.items():
                totals[where] = totals.get(where, 0) + count
        return totals
