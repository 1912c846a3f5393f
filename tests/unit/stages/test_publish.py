"""stages.publish: results and stream events through a real Bus to the session's real nats-server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Callable
from fractions import Fraction
from typing import Any

import jsonschema
import nats
import numpy as np
import pytest

from pipeline.bus import Bus
from pipeline.config import NatsConfig
from pipeline.errors import ConfigError
from pipeline.media import EncodedPacket, EndOfStream, Item, StreamInfo, StreamStatus, VideoFrame
from pipeline.results import EVENT_SCHEMA, RESULT_SCHEMA, SCHEMA_VERSION
from pipeline.stage import StageContext
from stages.publish import Publish, PublishParams

RESULT_VALIDATOR = jsonschema.Draft202012Validator(json.loads(RESULT_SCHEMA.read_text()))
EVENT_VALIDATOR = jsonschema.Draft202012Validator(json.loads(EVENT_SCHEMA.read_text()))
WAIT_S = 30.0  # hang guard for messages to arrive; never a timing assertion


@dataclasses.dataclass
class Received:
    subject: str
    msg_id: str | None
    body: dict[str, Any]


class Subscriber:
    """A plain nats-py client on ``<prefix>.>`` that keeps every message in arrival order."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.messages: list[Received] = []
        self._client: Any = None
        self._arrived = asyncio.Condition()
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Subscriber:
        self._client = await nats.connect(self.url)
        await self._client.subscribe(f"{self.prefix}.>", cb=self._on_message)
        await self._client.flush()  # the server has the subscription before anything is published
        return self

    async def ready_for(self, bus: Bus) -> None:
        """Wait until a message from ``bus`` reaches this subscription.

        A flushed SUB is not always enough: now and then (about 1 in 100 here) nats-server drops the
        first message from a connection that was opened before the subscription was made (see
        nats-io/nats.rs#1274). Probing until one arrives makes the tests independent of that race.
        """
        for attempt in range(50):
            await bus.client.publish(f"{self.prefix}.ready.{attempt}", b"{}")
            await bus.client.flush()
            try:
                await asyncio.wait_for(self._ready.wait(), 1.0)
                return
            except TimeoutError:
                continue
        raise AssertionError("no message from the bus ever reached the subscriber")

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()

    async def _on_message(self, msg: Any) -> None:
        if msg.subject.startswith(f"{self.prefix}.ready."):
            self._ready.set()
            return
        msg_id = msg.headers.get("Nats-Msg-Id") if msg.headers else None
        async with self._arrived:
            self.messages.append(Received(msg.subject, msg_id, json.loads(msg.data)))
            self._arrived.notify_all()

    async def wait_for_subject(self, subject: str) -> None:
        async with self._arrived:
            await asyncio.wait_for(
                self._arrived.wait_for(lambda: any(m.subject == subject for m in self.messages)), WAIT_S
            )

    def on(self, subject: str) -> list[Received]:
        return [m for m in self.messages if m.subject == subject]


@pytest.fixture()
def prefix() -> str:
    """A subject prefix of this test's own, so tests sharing the session's server never mix."""
    return f"pub{uuid.uuid4().hex[:10]}"


@pytest.fixture()
async def subscriber(nats_server, prefix) -> AsyncIterator[Subscriber]:
    async with Subscriber(nats_server.url, prefix) as sub:
        yield sub


@pytest.fixture()
async def bus(nats_server, prefix, subscriber) -> AsyncIterator[Bus]:
    connected = await Bus.connect(NatsConfig(url=nats_server.url, prefix=prefix), pipeline="unit")
    await subscriber.ready_for(connected)
    yield connected
    await connected.close()


async def started_publish(make_ctx: Callable[..., StageContext], bus: Bus, **params) -> Publish:
    stage = Publish("publish", PublishParams(**params))
    await stage.start(dataclasses.replace(make_ctx("publish"), bus=bus))
    return stage


def frame_item(stream_id: str, seq: int) -> Item:
    frame = VideoFrame(
        np.zeros((36, 64, 3), np.uint8), pts=seq * 512, time_base=Fraction(1, 12800), width=64, height=36
    )
    item = Item(stream_id=stream_id, media=frame, capture_time=1_700_000_000.0 + seq, seq=seq)
    item.timings_ms.update({"decode": 1.5, "infer": 7.25})
    item.results["text"] = {"type": "text_detection", "model": "pp-ocrv4-det", "boxes": []}
    return item


async def finish(subscriber: Subscriber, bus: Bus, sentinel: str) -> None:
    """Publish a sentinel after everything else and wait for it: NATS keeps one connection's order,
    so once it arrives, everything published before it has arrived too."""
    assert await bus.outbox.settle(WAIT_S)  # the outbox has handed everything to the connection
    await bus.client.publish(sentinel, b"{}")
    await bus.client.flush()
    await subscriber.wait_for_subject(sentinel)


async def test_results_and_events_reach_their_subjects_in_order(make_ctx, bus, subscriber, prefix):
    publish = await started_publish(make_ctx, bus)
    await publish.on_stream_added(StreamInfo("cam-1", "file:///x.mp4", live=False))
    for seq in range(3):
        assert list(await publish.process(frame_item("cam-1", seq))) == []  # publish is the end of the line
    assert list(await publish.on_stream_ended(EndOfStream("cam-1", "eof"))) == []
    await finish(subscriber, bus, f"{prefix}.sentinel")

    results_subject = f"{prefix}.unit.cam-1"
    events_subject = f"{prefix}.unit.cam-1.events"
    assert [m.subject for m in subscriber.messages] == [
        events_subject,
        results_subject,
        results_subject,
        results_subject,
        events_subject,
        f"{prefix}.sentinel",
    ]

    results = subscriber.on(results_subject)
    run = results[0].body["run"]
    assert [m.msg_id for m in results] == [f"unit.cam-1.{run}.0", f"unit.cam-1.{run}.1", f"unit.cam-1.{run}.2"]
    for seq, message in enumerate(results):
        RESULT_VALIDATOR.validate(message.body)
        body = message.body
        assert body["schema_version"] == SCHEMA_VERSION
        assert (body["pipeline"], body["stream_id"], body["seq"]) == ("unit", "cam-1", seq)
        assert (body["pts"], body["time_base"]) == (seq * 512, "1/12800")
        assert body["media_time_s"] == pytest.approx(seq * 0.04)
        assert body["capture_time"] == 1_700_000_000.0 + seq
        assert body["frame"] == {"width": 64, "height": 36}
        assert body["results"] == {"text": {"type": "text_detection", "model": "pp-ocrv4-det", "boxes": []}}
        assert body["latency_ms"]["decode"] == 1.5 and body["latency_ms"]["infer"] == 7.25
        assert body["drops"] == {"total": 0, "by_reason": {}}

    started, ended = (m.body for m in subscriber.on(events_subject))
    for event in (started, ended):
        EVENT_VALIDATOR.validate(event)
        assert (event["pipeline"], event["stream_id"]) == ("unit", "cam-1")
    assert started["run"] == ended["run"] == run
    assert [m.msg_id for m in subscriber.on(events_subject)] == [f"unit.cam-1.{run}.e0", f"unit.cam-1.{run}.e1"]
    assert started["event"] == "started"
    assert "frames" not in started and "reason" not in started
    assert ended["event"] == "ended"
    assert ended["reason"] == "eof"
    assert ended["frames"] == {"decoded": 0, "published": 3, "dropped": 0}

    counters = publish.ctx.stats.stream("cam-1")
    assert counters.published == 3
    assert counters.ended


async def test_in_a_cluster_a_file_stream_s_results_are_identified_by_position(make_ctx, bus, subscriber, prefix):
    """Under every owner the catalog's run; a file's frame keeps one id whoever publishes it (a
    resumed stream's duplicates are dropped by JetStream), while a live stream's results and every
    event are numbered per owner (the epoch in the id). Sent results move ``published_to``."""
    publish = await started_publish(make_ctx, bus)
    stats = publish.ctx.stats
    for stream_id in ("file", "live"):
        stats.stream(stream_id).run, stats.stream(stream_id).lease = "r1", ("w1", 7)
    await publish.on_stream_added(StreamInfo("file", "/x.mp4", live=False, seekable=True))
    await publish.on_stream_added(StreamInfo("live", "rtsp://cam/1", live=True))
    for seq in (0, 2, 1):  # sent in this order: published_to is the furthest media time sent
        await publish.process(frame_item("file", seq))
    await publish.process(frame_item("live", 5))
    await finish(subscriber, bus, f"{prefix}.sentinel")

    file_results = subscriber.on(f"{prefix}.unit.file")
    assert [m.msg_id for m in file_results] == ["unit.file.r1.v0", "unit.file.r1.v1024", "unit.file.r1.v512"]
    assert {(m.body["run"], m.body["owner"], m.body["epoch"]) for m in file_results} == {("r1", "w1", 7)}
    assert [m.msg_id for m in subscriber.on(f"{prefix}.unit.live")] == ["unit.live.r1.7.5"]
    assert [m.msg_id for m in subscriber.on(f"{prefix}.unit.file.events")] == ["unit.file.r1.7.e0"]
    assert stats.stream("file").published_to == Fraction(2 * 512, 12800)


async def test_a_stream_added_again_after_it_ended_counts_as_running_again(make_ctx, bus, subscriber, prefix):
    publish = await started_publish(make_ctx, bus)
    counters = publish.ctx.stats.stream("cam")
    await publish.on_stream_added(StreamInfo("cam", "/x.mp4", live=False))
    await publish.on_stream_ended(EndOfStream("cam", "stopped"))
    assert counters.ended
    await publish.on_stream_added(StreamInfo("cam", "/x.mp4", live=False))
    assert not counters.ended  # running (``streamgraph_streams_running``), never retired as ended


async def test_published_counts_per_stream(make_ctx, bus, subscriber, prefix):
    publish = await started_publish(make_ctx, bus, events=False)
    for seq in range(4):
        await publish.process(frame_item("a", seq))
    await publish.process(frame_item("b", 0))
    await finish(subscriber, bus, f"{prefix}.sentinel")
    stats = publish.ctx.stats
    assert (stats.stream("a").published, stats.stream("b").published, stats.published) == (4, 1, 5)
    ((b_result),) = subscriber.on(f"{prefix}.unit.b")
    assert b_result.msg_id == f"unit.b.{b_result.body['run']}.0"


async def test_stream_error_publishes_error_then_ended(make_ctx, bus, subscriber, prefix):
    publish = await started_publish(make_ctx, bus)
    await publish.on_stream_added(StreamInfo("cam", "rtsp://camera/1", live=True))
    await publish.process(frame_item("cam", 0))
    await publish.on_stream_ended(EndOfStream("cam", "error", "cam.mp4: file ends early"))
    await finish(subscriber, bus, f"{prefix}.sentinel")

    events = [m.body for m in subscriber.on(f"{prefix}.unit.cam.events")]
    for event in events:
        EVENT_VALIDATOR.validate(event)
    assert [e["event"] for e in events] == ["started", "error", "ended"]
    assert events[1]["message"] == "cam.mp4: file ends early"
    assert events[2]["reason"] == "error"
    assert events[2]["frames"]["published"] == 1


async def test_ended_event_counts_packets_dropped_before_decoding(make_ctx, bus, subscriber, prefix):
    """A stream whose every packet was dropped on its way to ``decode`` (as an edge drops them:
    ``stats.drop_item``) decoded, published and dropped no frame: its ``ended`` event says so."""
    publish = await started_publish(make_ctx, bus)
    await publish.on_stream_added(StreamInfo("cam", "x.h264", live=False))
    for pts in range(50):
        packet = EncodedPacket(b"\x00", pts, Fraction(1, 90000), False, "video")
        publish.ctx.stats.drop_item(Item(stream_id="cam", media=packet, capture_time=1.0), "edge:decode")
    await publish.on_stream_ended(EndOfStream("cam", "eof"))
    await finish(subscriber, bus, f"{prefix}.sentinel")
    ended = [m.body for m in subscriber.on(f"{prefix}.unit.cam.events")][-1]
    EVENT_VALIDATOR.validate(ended)
    assert ended["frames"] == {"decoded": 0, "published": 0, "dropped": 0, "packets_dropped": 50}


async def test_stopped_stream_ends_with_reason_stopped(make_ctx, bus, subscriber, prefix):
    publish = await started_publish(make_ctx, bus)
    await publish.on_stream_added(StreamInfo("cam", "x", live=False))
    await publish.on_stream_ended(EndOfStream("cam", "stopped"))
    await finish(subscriber, bus, f"{prefix}.sentinel")
    events = [m.body for m in subscriber.on(f"{prefix}.unit.cam.events")]
    assert [(e["event"], e.get("reason")) for e in events] == [("started", None), ("ended", "stopped")]


async def test_live_connection_statuses_become_events_and_ended_counts_reconnects(make_ctx, bus, subscriber, prefix):
    publish = await started_publish(make_ctx, bus)
    await publish.on_stream_status(StreamStatus("cam", "connecting", "rtsp://camera/1 over tcp"))
    await publish.on_stream_added(StreamInfo("cam", "rtsp://camera/1", live=True))
    await publish.on_stream_status(StreamStatus("cam", "connected", "rtsp://camera/1: h264 640x360"))
    await publish.on_stream_status(StreamStatus("cam", "stalled", "no packet for 5.0 s"))
    await publish.on_stream_status(StreamStatus("cam", "reconnecting", "no packet for 5.0 s; attempt 1 in 0.31 s"))
    publish.ctx.stats.stream("cam").reconnects = 1
    await publish.on_stream_ended(EndOfStream("cam", "stopped"))
    await finish(subscriber, bus, f"{prefix}.sentinel")

    events = [m.body for m in subscriber.on(f"{prefix}.unit.cam.events")]
    for event in events:
        EVENT_VALIDATOR.validate(event)
    assert [(e["event"], e.get("message")) for e in events] == [
        ("connecting", "rtsp://camera/1 over tcp"),
        ("started", None),
        ("connected", "rtsp://camera/1: h264 640x360"),
        ("stalled", "no packet for 5.0 s"),
        ("reconnecting", "no packet for 5.0 s; attempt 1 in 0.31 s"),
        ("ended", None),
    ]
    assert events[-1]["reconnects"] == 1


async def test_events_false_publishes_results_only(make_ctx, bus, subscriber, prefix):
    publish = await started_publish(make_ctx, bus, events=False)
    await publish.on_stream_added(StreamInfo("cam", "x", live=False))
    await publish.process(frame_item("cam", 0))
    await publish.on_stream_ended(EndOfStream("cam", "error", "boom"))
    await finish(subscriber, bus, f"{prefix}.sentinel")

    assert [m.subject for m in subscriber.messages] == [f"{prefix}.unit.cam", f"{prefix}.sentinel"]
    counters = publish.ctx.stats.stream("cam")
    assert counters.published == 1
    assert counters.ended  # the stream is still marked ended, only nothing is announced


async def test_drops_counted_so_far_ride_in_the_next_result(make_ctx, bus, subscriber, prefix):
    publish = await started_publish(make_ctx, bus, events=False)
    await publish.process(frame_item("cam", 0))
    publish.ctx.stats.count_drop("cam", "edge:infer", 2)
    publish.ctx.stats.count_drop("other", "edge:infer", 5)  # another stream's drops stay out
    await publish.process(frame_item("cam", 3))
    await finish(subscriber, bus, f"{prefix}.sentinel")

    first, second = (m.body for m in subscriber.on(f"{prefix}.unit.cam"))
    assert first["drops"] == {"total": 0, "by_reason": {}}
    assert second["drops"] == {"total": 2, "by_reason": {"edge:infer": 2}}
    RESULT_VALIDATOR.validate(second)


async def test_stream_ids_are_made_safe_for_subjects_but_kept_in_ids_and_bodies(make_ctx, bus, subscriber, prefix):
    publish = await started_publish(make_ctx, bus)
    await publish.on_stream_added(StreamInfo("lobby.cam 2", "x", live=False))
    await publish.process(frame_item("lobby.cam 2", 7))
    await finish(subscriber, bus, f"{prefix}.sentinel")

    # A dot or a space would split or break the subject: both become '_' in the subject token.
    (result,) = subscriber.on(f"{prefix}.unit.lobby_cam_2")
    assert result.msg_id == f"unit.lobby.cam 2.{result.body['run']}.7"
    assert result.body["stream_id"] == "lobby.cam 2"
    (started,) = subscriber.on(f"{prefix}.unit.lobby_cam_2.events")
    assert started.body["stream_id"] == "lobby.cam 2"


async def test_start_without_a_bus_is_a_config_error(make_ctx):
    publish = Publish("out", PublishParams())
    with pytest.raises(ConfigError) as info:
        await publish.start(make_ctx("out"))
    assert info.value.path == "stage out"
    assert "nats" in info.value.message


def test_params_validation():
    assert PublishParams().events is True
    with pytest.raises(ValueError):
        PublishParams.model_validate({"events": "no"})
    with pytest.raises(ValueError):
        PublishParams.model_validate({"subject": "x"})
