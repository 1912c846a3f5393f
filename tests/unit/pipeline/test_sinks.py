"""pipeline.sinks: the outbox every sink has (bounded, drop-oldest, retry, close), the jsonl
file's rotation, MQTT's topics, the webhook's signature, and the ``sinks:`` config's errors."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import parse_config
from pipeline.errors import ConfigError
from pipeline.service import build
from pipeline.sinks import Sinks
from pipeline.sinks.base import Sink, SinkDown, SinkMessage, SinkRejected
from pipeline.sinks.config import MqttSinkConfig
from pipeline.sinks.jsonl import JsonlSink
from pipeline.sinks.mqtt import MqttSink, object_counts
from pipeline.sinks.webhook import signature


def message(seq: int, kind: str = "result", **body: Any) -> SinkMessage:
    body = {"seq": seq, **body} if kind == "result" else {"event": "started", **body}
    return SinkMessage(kind, "cam", body, json.dumps(body).encode())  # type: ignore[arg-type]


class Recording(Sink):
    """A sink of our own logic's making: delivers into a list, or raises what ``fail`` holds."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("rec", **kwargs)
        self.batches: list[list[int]] = []
        self.fail: list[Exception] = []
        self.delivered = asyncio.Event()

    async def deliver(self, batch: list[SinkMessage]) -> None:
        if self.fail:
            raise self.fail.pop(0)
        self.batches.append([m.body["seq"] for m in batch])
        self.delivered.set()


async def test_a_full_outbox_drops_its_oldest_and_counts_it() -> None:
    sink = Recording(max_pending=3)
    for seq in range(5):
        sink.offer(message(seq))  # not started: nothing is taken off
    assert sink.pending == 3 and sink.dropped == {"full": 2}
    await sink.start()
    await sink.close(timeout_s=5)
    assert sink.batches == [[2, 3, 4]] and sink.sent == 3


async def test_a_down_sink_retries_the_same_batch_and_recovers() -> None:
    sink = Recording(max_pending=10, max_batch=2)
    sink.fail = [SinkDown("gone"), SinkDown("still gone")]
    await sink.start()
    sink.offer(message(0))
    sink.offer(message(1))
    await asyncio.wait_for(sink.delivered.wait(), timeout=10)
    assert sink.batches[0] in ([0], [0, 1])
    await sink.close(timeout_s=5)
    assert [seq for batch in sink.batches for seq in batch] == [0, 1]
    assert sink.down_since is None and not sink.dropped


async def test_a_rejected_batch_is_dropped_and_the_next_goes_on() -> None:
    sink = Recording(max_pending=10, max_batch=1)
    sink.fail = [SinkRejected("HTTP 400")]
    await sink.start()
    for seq in range(3):
        sink.offer(message(seq))
    await sink.close(timeout_s=5)
    assert sink.batches == [[1], [2]] and sink.dropped == {"rejected": 1}


async def test_what_a_dead_sink_still_holds_at_the_end_is_counted_unsent() -> None:
    sink = Recording(max_pending=10, max_batch=2)
    sink.fail = [SinkDown("gone")] * 1000
    await sink.start()
    for seq in range(5):
        sink.offer(message(seq))
    await sink.close(timeout_s=0.3)
    assert sink.sent == 0 and sink.dropped == {"unsent": 5}
    sink.offer(message(9))
    assert sink.dropped["closed"] == 1


async def test_batches_wait_for_more_up_to_the_delay() -> None:
    sink = Recording(max_pending=10, max_batch=3, batch_delay_s=0.2)
    await sink.start()
    sink.offer(message(0))
    await asyncio.sleep(0.05)
    sink.offer(message(1))
    sink.offer(message(2))
    sink.offer(message(3))
    await sink.close(timeout_s=5)
    assert sink.batches == [[0, 1, 2], [3]]


async def test_jsonl_rotates_by_size_and_keeps_that_many(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = JsonlSink("j", str(path), max_pending=100, max_bytes=1024, keep=2)
    await sink.connect()
    for seq in range(40):
        await sink.deliver([message(seq, pad="x" * 80)])
    await sink.disconnect()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["out.jsonl", "out.jsonl.1", "out.jsonl.2"]
    seqs = []
    for name in ("out.jsonl.2", "out.jsonl.1", "out.jsonl"):
        text = (tmp_path / name).read_text()
        assert len(text.encode()) <= 1024 and text.endswith("\n")
        seqs += [json.loads(line)["seq"] for line in text.splitlines()]
    assert seqs == list(range(40))[-len(seqs) :]  # the newest, in order, whole lines only


def test_mqtt_topics_follow_frigates() -> None:
    sink = MqttSink("m", MqttSinkConfig(type="mqtt", prefix="sg"))
    person = {"objects": {"objects": [{"label": "person"}, {"label": "person"}, {"label": "traffic light"}]}}
    first = message(0, results=person)
    topics = [(topic, payload, retain) for topic, payload, retain in sink.topics(first)]
    assert topics == [
        ("sg/cam/results", first.payload, False),
        ("sg/cam/person", b"2", False),
        ("sg/cam/traffic light", b"1", False),
    ]
    # Only changes: one person left, the light is still there.
    fewer = message(1, results={"objects": {"objects": [{"label": "person"}, {"label": "traffic light"}]}})
    assert [(t, p) for t, p, _ in sink.topics(fewer)][1:] == [("sg/cam/person", b"1")]
    gone = message(2, results={"objects": {"objects": []}})
    assert [(t, p) for t, p, _ in sink.topics(gone)][1:] == [("sg/cam/person", b"0"), ("sg/cam/traffic light", b"0")]
    started = message(0, kind="event")
    assert sink.topics(started) == [("sg/events", started.payload, False), ("sg/cam/status", b"started", True)]


def test_object_counts_reads_every_objects_list() -> None:
    results = {"a": {"objects": [{"label": "dog"}]}, "b": {"objects": [{"label": "dog"}, {"x": 1}]}, "c": {"boxes": []}}
    assert object_counts(results) == {"dog": 2}


def test_the_webhook_signature_is_githubs_scheme() -> None:
    body = b'[{"seq":1}]'
    assert signature("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


def config(sinks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "pipeline": "p",
        "stages": [{"name": "video", "type": "file", "params": {"path": __file__}}],
        "sinks": sinks,
    }


@pytest.mark.parametrize(
    ("sinks", "expected"),
    [
        ([{"type": "mqt"}], "sinks[0].type: unknown type 'mqt' (did you mean 'mqtt'?); known: jsonl, mqtt, webhook"),
        ([{"path": "x"}], "sinks[0].type: required key is missing"),
        ([{"type": "mqtt", "url": "http://x:1883"}], "sinks[0].url: expected mqtt://host:port or mqtts://host:port"),
        ([{"type": "webhook", "url": "ftp://x"}], "sinks[0].url: expected an http:// or https:// URL, got 'ftp://x'"),
        ([{"type": "jsonl"}], "sinks[0].path: required key is missing"),
        ([{"type": "jsonl", "path": "-", "keep": 0}], "sinks[0].keep: "),
        ([{"type": "jsonl", "path": "-", "colour": 1}], "sinks[0].colour: unknown key; allowed: events, keep"),
    ],
)
def test_bad_sinks_are_config_errors_naming_the_key(sinks: list[dict[str, Any]], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config(sinks))
    assert expected in str(caught.value)


def test_sinks_are_named_by_type_and_two_of_one_name_are_refused(tmp_path: Path) -> None:
    sinks = Sinks.from_config(
        parse_config(config([{"type": "jsonl", "path": "-"}, {"type": "jsonl", "path": "a"}])).sinks, tmp_path
    )
    assert [s.name for s in sinks] == ["jsonl", "jsonl-2"]
    twins = parse_config(
        config([{"type": "jsonl", "path": "-", "name": "x"}, {"type": "jsonl", "path": "a", "name": "x"}])
    )
    with pytest.raises(ConfigError, match=r"sinks\[1\]\.name: a second sink named 'x'"):
        build(twins)
