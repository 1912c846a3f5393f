"""pipeline.top's model: rows per stream from results and events, rates over a window,
latency percentiles, and messages that are not ours left alone."""

from __future__ import annotations

import json
from typing import Any

from pipeline.top import StreamTable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def result(seq: int, latency: float, dropped: int = 0) -> bytes:
    body: dict[str, Any] = {
        "pipeline": "p", "stream_id": "cam", "seq": seq, "latency_ms": {"total": latency},
        "drops": {"total": dropped}, "results": {"det": {"type": "object_detection", "objects": [{"label": "dog"}]}},
    }  # fmt: skip
    return json.dumps(body).encode()


def event(name: str) -> bytes:
    return json.dumps({"pipeline": "p", "stream_id": "cam", "event": name}).encode()


def test_rows_rates_percentiles_and_state() -> None:
    clock = Clock()
    table = StreamTable(clock=clock)
    table.handle(
        "streamgraph.p.cam.events", json.dumps({"pipeline": "p", "stream_id": "cam", "event": "started"}).encode()
    )
    for seq in range(100):
        clock.now += 0.1  # 10 results a second
        table.handle("streamgraph.p.cam", result(seq, latency=float(seq), dropped=seq // 50))
    row = table.rows[("p", "cam")]
    assert row.results == 100 and row.dropped == 1 and row.state == "running"
    assert abs(row.fps(clock.now) - 10.0) < 0.3
    assert row.latency(0.5) == 50.0 and row.latency(0.99) == 99.0
    assert row.fps(clock.now + 60) == 0.0  # nothing for a minute
    table.handle(
        "streamgraph.p.cam.events", json.dumps({"pipeline": "p", "stream_id": "cam", "event": "stalled"}).encode()
    )
    assert row.state == "stalled"


def test_messages_that_are_not_ours_are_left_alone() -> None:
    table = StreamTable()
    table.handle("streamgraph.other", b"not json")
    table.handle("streamgraph.other", b'{"hello": 1}')
    assert table.rows == {}
