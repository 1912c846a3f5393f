"""``streamgraph top``: a live table of every stream on a bus — state, results per second,
latency p50/p99, drops and what it found last — from the messages themselves (``rich``).

``StreamTable`` is the model (fed subject + bytes, as they come off NATS) and renders the table;
``run --show`` feeds one too and prints it when the run ends (what ``make demo`` ends with).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from .showresults import describe_result

FPS_WINDOW_S = 5.0
LATENCY_WINDOW = 200
"""Results the latency percentiles are taken over, per stream (the latest)."""
MAX_FOUND_CHARS = 60


@dataclass
class StreamRow:
    pipeline: str
    stream: str
    state: str = "running"
    arrivals: deque[float] = field(default_factory=deque)
    """Monotonic times of the results of the last ``FPS_WINDOW_S``."""
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    results: int = 0
    dropped: int = 0
    found: str = ""

    def fps(self, now: float) -> float:
        while self.arrivals and self.arrivals[0] < now - FPS_WINDOW_S:
            self.arrivals.popleft()
        if not self.arrivals:
            return 0.0
        span = min(FPS_WINDOW_S, max(1.0, now - self.arrivals[0]))
        return len(self.arrivals) / span

    def latency(self, share: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class StreamTable:
    """Streams by (pipeline, stream), from their results and events."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self.rows: dict[tuple[str, str], StreamRow] = {}
        self._clock = clock

    def handle(self, subject: str, data: bytes) -> None:
        try:
            body = json.loads(data)
        except ValueError:
            return
        if not isinstance(body, dict) or "stream_id" not in body or "pipeline" not in body:
            return  # not ours (another subject under the same prefix)
        key = (str(body["pipeline"]), str(body["stream_id"]))
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = StreamRow(*key)
        if subject.endswith(".events"):
            event = body.get("event")
            if event in ("started", "connecting", "connected", "stalled", "reconnecting", "error", "ended"):
                row.state = "running" if event in ("started", "connected") else str(event)
            return
        row.results += 1
        row.arrivals.append(self._clock())
        total = (body.get("latency_ms") or {}).get("total")
        if isinstance(total, int | float):
            row.latencies.append(float(total))
        row.dropped = int((body.get("drops") or {}).get("total", row.dropped))
        results = body.get("results") or {}
        found = "; ".join(f"{stage}: {describe_result(result)}" for stage, result in results.items())
        row.found = found if len(found) <= MAX_FOUND_CHARS else found[: MAX_FOUND_CHARS - 1] + "…"

    def table(self, now: float | None = None, title: str = "streamgraph top") -> Table:
        """The table now (``now``: a monotonic time; None: each stream's rate up to its last result)."""
        table = Table(title=title, title_justify="left")
        for column, justify in (
            ("pipeline", "left"), ("stream", "left"), ("state", "left"), ("results", "right"), ("fps", "right"),
            ("p50 ms", "right"), ("p99 ms", "right"), ("dropped", "right"), ("last found", "left"),
        ):  # fmt: skip
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for (pipeline, stream), row in sorted(self.rows.items()):
            at = now if now is not None else (row.arrivals[-1] if row.arrivals else self._clock())
            p50, p99 = row.latency(0.5), row.latency(0.99)
            table.add_row(
                pipeline,
                stream,
                row.state,
                str(row.results),
                f"{row.fps(at):.1f}",
                f"{p50:.0f}" if p50 is not None else "-",
                f"{p99:.0f}" if p99 is not None else "-",
                str(row.dropped),
                row.found,
            )
        return table


def print_table(table: Table, file: Any = None) -> None:
    Console(file=file or sys.stdout, width=160, soft_wrap=False).print(table)


async def top(client: Any, subject: str, *, seconds: float | None, refresh_s: float = 0.5) -> None:
    """Subscribe ``client`` to ``subject``; redraw the table live until cancelled, or, with
    ``seconds``, gather that long and print it once (for a script, or a terminal that is a file)."""
    model = StreamTable()

    async def on_message(msg: Any) -> None:
        model.handle(msg.subject, msg.data)

    await client.subscribe(subject, cb=on_message)
    await client.flush()
    if seconds is not None:
        await asyncio.sleep(seconds)
        print_table(model.table(time.monotonic(), title=f"streamgraph top: {subject}"))
        return
    with Live(model.table(time.monotonic()), refresh_per_second=1 / refresh_s, screen=False) as live:
        while True:
            await asyncio.sleep(refresh_s)
            live.update(model.table(time.monotonic(), title=f"streamgraph top: {subject}"))


async def run_top(url: str, subject: str, *, seconds: float | None) -> None:
    """``streamgraph top``: connect to ``url`` (as ``subscribe`` does) and show ``subject``'s streams."""
    from .errors import ConfigError
    from .natsconnect import NO_AUTH, nats_target, open_connection
    from .urls import nats_url_problem

    if problem := nats_url_problem(url):
        raise ConfigError("--nats-url", problem)
    client = await open_connection(nats_target(url, NO_AUTH), attempts=3, connect_timeout=5.0)
    try:
        await top(client, subject, seconds=seconds)
    finally:
        await client.close()
