"""The published messages: one result per frame, and stream lifecycle events.

Both are versioned JSON; ``pipeline/schemas/*.schema.json`` describe them and the tests validate
every message against those files. Subjects: ``<prefix>.<pipeline>.<stream>`` for results and
``<prefix>.<pipeline>.<stream>.events`` for events.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .media import Item, VideoFrame
from .stats import StreamCounters

SCHEMA_VERSION = 1
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
RESULT_SCHEMA = SCHEMA_DIR / "result.schema.json"
EVENT_SCHEMA = SCHEMA_DIR / "event.schema.json"

RUNTIME_LATENCY_KEYS = ("ingest", "queue", "blocked", "ordering", "publish")
"""The parts of a result's latency the runtime itself marks, in every result; the stages add the
keys they report (``Stage.reported_latency_keys``: decode, prepare, batch_wait, infer, post,
held, or their own). The parts tile the time from capture to the message (``Item.mark``), so
they add up to ``total``."""


def result_subject(prefix: str, pipeline: str, stream_id: str) -> str:
    return f"{prefix}.{pipeline}.{subject_token(stream_id)}"


def events_subject(prefix: str, pipeline: str, stream_id: str) -> str:
    return f"{result_subject(prefix, pipeline, stream_id)}.events"


def subject_token(stream_id: str) -> str:
    """A stream id made safe for one NATS subject token (no dots, spaces or wildcards)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stream_id) or "_"


def new_run_id() -> str:
    """A token for one run of a stream, from its start to its end: the wall clock in ns, base 16.

    A stream started again (the service restarted, the stream was removed and added again) gets a
    new one, so its message ids never collide with its previous run's in JetStream's duplicate
    window, while a retried message keeps its id.
    """
    return f"{time.time_ns():x}"


def message_id(pipeline: str, stream_id: str, run: str, position: int | str) -> str:
    """``Nats-Msg-Id`` of a result: unique per stream run and position (its seq, or where it is in
    a file), the same for every retry."""
    return f"{pipeline}.{stream_id}.{run}.{position}"


def event_id(pipeline: str, stream_id: str, run: str, index: int) -> str:
    """``Nats-Msg-Id`` of a stream's ``index``-th event in one run."""
    return f"{pipeline}.{stream_id}.{run}.e{index}"


def build_result(
    pipeline: str,
    item: Item,
    counters: StreamCounters,
    stage_keys: Sequence[str] = (),
    *,
    run: str | None = None,
) -> dict[str, Any]:
    """The result message of ``item``. Its ``latency_ms`` has the runtime's keys, the keys the
    pipeline's stages report (``stage_keys``; 0 where this item spent nothing there), any other a
    stage added to the item, and ``total``, from ``capture_time`` to now.

    Building the message ends the item's last part, ``publish``: from the end of its part before
    (it got its slot in the publishing stage) to now, so the parts add up to ``total``: a wait
    for room in an outbox before building it is inside that stretch."""
    media = item.media
    now = time.time()
    item.mark("publish", now=now)
    keys = dict.fromkeys([*stage_keys, *RUNTIME_LATENCY_KEYS, *item.timings_ms])
    latency = {key: round(item.timings_ms.get(key, 0.0), 3) for key in keys}
    latency["total"] = round(max(0.0, now - item.capture_time) * 1000.0, 3)
    message: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "pipeline": pipeline,
        "stream_id": item.stream_id,
        "seq": item.seq,
        "pts": media.pts,
        "time_base": f"{media.time_base.numerator}/{media.time_base.denominator}",
        "media_time_s": round(float(media.pts * media.time_base), 6) if media.pts is not None else None,
        "capture_time": round(item.capture_time, 6),
        "publish_time": round(now, 6),
        "results": item.results,
        "latency_ms": latency,
        "drops": {"total": counters.dropped, "by_reason": dict(counters.drops)},
    }
    if run is not None:
        message["run"] = run
    if counters.lease is not None:
        message["owner"], message["epoch"] = counters.lease
    if isinstance(media, VideoFrame):
        message["frame"] = {"width": media.width, "height": media.height}
    return message


def build_event(
    pipeline: str,
    stream_id: str,
    event: str,
    *,
    reason: str | None = None,
    message: str | None = None,
    counters: StreamCounters | None = None,
    run: str | None = None,
    fields: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An event's message; ``fields``: the rest of an event of its own kind (``owner_changed``'s
    owners and epoch, an object event's track and zone)."""
    body: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "pipeline": pipeline,
        "stream_id": stream_id,
        "event": event,
        "time": round(time.time(), 6),
    }
    if run is not None:
        body["run"] = run
    if reason is not None:
        body["reason"] = reason
    if message is not None:
        body["message"] = message
    if counters is not None:
        body["frames"] = {"decoded": counters.decoded, "published": counters.published, "dropped": counters.dropped}
        if counters.consumed:
            body["frames"]["consumed"] = counters.consumed
        if counters.packets_dropped:  # lost before decoding: no frame counter above would show them
            body["frames"]["packets_dropped"] = counters.packets_dropped
        if counters.reconnects:
            body["reconnects"] = counters.reconnects
    if fields is not None:
        body.update(fields)
    return body


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
