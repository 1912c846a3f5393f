"""``streamgraph run --show N``: the first N results of each stream and every stream event, one
short line each, as a subscriber of the run receives them.

It subscribes to the pipeline's subjects on the run's own bus connection before any stage starts,
so what it prints is what went over the bus (not what a stage meant to send), and the first run of
a pipeline shows what it found without a second terminal. ``streamgraph subscribe`` prints the
messages whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .bus import Bus

MAX_TEXTS = 4
"""Recognized lines shown per result; the line says how many more there were."""
MAX_TEXT_CHARS = 40


class ResultPrinter:
    """Writes a line per stream event and per result, up to ``per_stream`` results a stream."""

    def __init__(self, prefix: str, pipeline: str, *, per_stream: int, write: Callable[[str], None]) -> None:
        self.subjects = f"{prefix}.{pipeline}"
        """What every subject of the pipeline starts with (``nats.prefix`` and the pipeline name)."""
        self.per_stream = per_stream
        self._write = write
        self._shown: dict[str, int] = {}
        """result subject -> results seen on it (one subject per stream)."""
        self._stream_ids: dict[str, str] = {}
        """result subject -> the stream id its messages carry (a subject token may differ)."""
        self.also: Callable[[str, bytes], None] | None = None
        """Given every message too (``run --show``'s stream table)."""
        self._result_tokens = len(self.subjects.split(".")) + 1
        """Tokens of a result's subject; an event's has one more (``.events``)."""

    async def subscribe(self, bus: Bus) -> None:
        """Subscribe to ``<prefix>.<pipeline>.>`` on ``bus`` (``run_pipeline``'s ``on_bus``)."""
        await bus.client.subscribe(f"{self.subjects}.>", cb=self._on_message)
        await bus.client.flush()  # the server has the subscription before the first frame is read
        self._write(
            f"showing every stream event and the first {_plural(self.per_stream, 'result', 'results')} "
            f"of each stream, as a subscriber to {self.subjects}.> receives them"
        )

    async def _on_message(self, msg: Any) -> None:
        self.handle(msg.subject, msg.data)

    def handle(self, subject: str, data: bytes) -> None:
        """One message as it came off the bus."""
        if self.also is not None:
            self.also(subject, data)
        if len(subject.split(".")) > self._result_tokens:  # <prefix>.<pipeline>.<stream>.events
            self._write(event_line(_decode(data)))
            return
        seen = self._shown.get(subject, 0)
        self._shown[subject] = seen + 1
        if seen < self.per_stream:  # only these are decoded: a long run costs a dict lookup a message
            body = _decode(data)
            self._stream_ids[subject] = str(body.get("stream_id", subject))
            self._write(result_line(body))
        elif seen == self.per_stream:
            self._write(f"[{self._stream_ids.get(subject, subject)}] more results, not shown (--show {seen})")


def _decode(data: bytes) -> dict[str, Any]:
    try:
        body = json.loads(data)
    except ValueError:
        return {"raw": data.decode(errors="replace")}
    return body if isinstance(body, dict) else {"raw": body}


def result_line(body: dict[str, Any]) -> str:
    """``[sample] #3 0.12 s  text: 3 boxes  (latency 41 ms)``."""
    if "raw" in body:
        return f"(not a result message) {body['raw']}"
    head = f"[{body.get('stream_id', '?')}] #{body.get('seq', '?')}"
    media_time = body.get("media_time_s")
    if isinstance(media_time, int | float):
        head += f" {media_time:.2f} s"
    results = body.get("results") or {}
    found = "; ".join(f"{stage}: {describe_result(result)}" for stage, result in results.items()) or "no results"
    tail = []
    total = (body.get("latency_ms") or {}).get("total")
    if isinstance(total, int | float):
        tail.append(f"latency {total:.0f} ms")
    dropped = (body.get("drops") or {}).get("total")
    if dropped:
        tail.append(f"{dropped} dropped so far")
    return f"{head}  {found}" + (f"  ({', '.join(tail)})" if tail else "")


def describe_result(result: Any) -> str:
    """A stage's result in a few words, by its ``type`` (the shipped ones; any other by its lists)."""
    if not isinstance(result, dict):
        return str(result)
    kind = result.get("type")
    if kind == "text_detection":
        return _boxes(result.get("boxes") or [])
    if kind == "text_recognition":
        return _texts(result.get("lines") or [])
    if kind == "speech_segments":
        return _segments(result)
    if kind == "object_detection":
        return _objects(result.get("objects") or [])
    if kind == "join":
        items = result.get("items") or []
        return f"{result.get('branch', '?')} {result.get('status', '?')}, {_count(items, 'item', 'items')}"
    lists = [f"{len(value)} {key}" for key, value in result.items() if isinstance(value, list)]
    return ", ".join([str(kind or "result"), *lists])


def _count(values: Any, one: str, many: str) -> str:
    return _plural(len(values) if isinstance(values, list) else 0, one, many)


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _boxes(boxes: list[Any]) -> str:
    """``6 boxes, score 0.71-0.93``."""
    scores = [b["score"] for b in boxes if isinstance(b, dict) and isinstance(b.get("score"), int | float)]
    found = _count(boxes, "box", "boxes")
    if not scores:
        return found
    low, high = min(scores), max(scores)
    return f"{found}, score {low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{found}, score {low:.2f}-{high:.2f}"


def _objects(objects: list[Any]) -> str:
    """``dog 0.87, truck 0.82, bicycle 0.61`` (a track's id after its label: ``dog#3``)."""
    named = []
    for found in objects:
        if not isinstance(found, dict):
            continue
        track = f"#{found['track_id']}" if "track_id" in found else ""
        score = found.get("score")
        named.append(f"{found.get('label', '?')}{track} {score:.2f}" if isinstance(score, int | float) else "?")
    if not named:
        return "no objects"
    more = f" and {len(named) - MAX_TEXTS} more" if len(named) > MAX_TEXTS else ""
    return ", ".join(named[:MAX_TEXTS]) + more


def _texts(lines: list[Any]) -> str:
    texts = [str(line.get("text", "")) for line in lines if isinstance(line, dict)]
    if not texts:
        return "no text"
    shown = [json.dumps(_clip(t), ensure_ascii=False) for t in texts[:MAX_TEXTS]]
    more = f" and {len(texts) - MAX_TEXTS} more" if len(texts) > MAX_TEXTS else ""
    return ", ".join(shown) + more


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1] + "…"


def _segments(result: dict[str, Any]) -> str:
    spans = [
        f"speech {s['start_s']:.2f}-{s['end_s']:.2f} s"
        for s in result.get("segments") or []
        if isinstance(s, dict) and isinstance(s.get("start_s"), int | float) and isinstance(s.get("end_s"), int | float)
    ]
    probability = result.get("probability")
    if isinstance(probability, int | float):
        spans.append(f"p(speech) {probability:.2f}")
    return ", ".join(spans) or "no segment"


def event_line(body: dict[str, Any]) -> str:
    """``[sample] ended (eof): 250 decoded, 250 published, 0 dropped``."""
    if "raw" in body:
        return f"(not an event message) {body['raw']}"
    head = f"[{body.get('stream_id', '?')}] {body.get('event', '?')}"
    if body.get("reason"):
        head += f" ({body['reason']})"
    details = []
    frames = body.get("frames")
    if isinstance(frames, dict):
        details += [f"{frames[k]} {k}" for k in ("decoded", "published", "dropped", "consumed") if k in frames]
    if body.get("reconnects"):
        details.append(f"{body['reconnects']} reconnects")
    if body.get("message"):
        details.append(str(body["message"]))
    if "track_id" in body:  # an object event: which object, and where
        where = [str(body[key]) for key in ("zone", "line", "direction") if key in body]
        details.append(" ".join([f"{body.get('label', '?')}#{body['track_id']}", *where]))
    return f"{head}: {', '.join(details)}" if details else head
