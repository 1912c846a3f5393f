"""pipeline.results: published messages match their JSON schemas; subjects are safe NATS tokens."""

from __future__ import annotations

import json
import time
from fractions import Fraction

import jsonschema
import numpy as np
import pytest

from pipeline.media import AudioChunk, EncodedPacket, Item, VideoFrame
from pipeline.results import (
    EVENT_SCHEMA,
    RESULT_SCHEMA,
    RUNTIME_LATENCY_KEYS,
    SCHEMA_VERSION,
    build_event,
    build_result,
    encode,
    event_id,
    events_subject,
    message_id,
    new_run_id,
    result_subject,
    subject_token,
)
from pipeline.stats import StreamCounters


@pytest.fixture(scope="module")
def result_validator():
    schema = json.loads(RESULT_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def event_validator():
    schema = json.loads(EVENT_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def frame_item(seq: int = 3) -> Item:
    frame = VideoFrame(np.zeros((4, 6, 3), np.uint8), pts=3003, time_base=Fraction(1, 30000), width=6, height=4)
    item = Item(stream_id="cam-1", media=frame, capture_time=time.time() - 0.05, seq=seq)
    item.timings_ms.update({"decode": 1.25, "queue": 0.5, "prepare": 2.0, "infer": 10.0, "post": 0.75})
    item.results["text"] = {
        "type": "text_detection",
        "model": "pp-ocrv4-det",
        "boxes": [{"box": [1.0, 2.0, 5.0, 3.0], "quad": [[1, 2], [5, 2], [5, 3], [1, 3]], "score": 0.9}],
    }
    return item


STAGE_KEYS = ("decode", "prepare", "batch_wait", "infer", "post")
"""What the text-detect pipeline's stages report (decode, prepare, infer, text_detection)."""


def test_a_stage_key_the_item_never_reached_is_zero_and_an_undeclared_one_is_kept(result_validator):
    item = frame_item()
    item.timings_ms["track"] = 2.0  # a user's stage that reports a key of its own without declaring it
    latency = build_result("p", item, StreamCounters(), stage_keys=("decode", "tracker_wait"))["latency_ms"]
    assert latency["tracker_wait"] == 0.0 and latency["track"] == 2.0 and latency["decode"] == 1.25
    result_validator.validate(roundtrip(build_result("p", item, StreamCounters(), stage_keys=("tracker_wait",))))


def roundtrip(message: dict) -> dict:
    return json.loads(encode(message))


def test_result_for_a_frame_validates_and_carries_the_item(result_validator):
    counters = StreamCounters()
    counters.drops = {"edge:det": 2, "shutdown": 1}
    message = build_result("text-detect", frame_item(), counters, stage_keys=STAGE_KEYS)
    result_validator.validate(roundtrip(message))
    assert message["schema_version"] == SCHEMA_VERSION == 1
    assert (message["pipeline"], message["stream_id"], message["seq"]) == ("text-detect", "cam-1", 3)
    assert message["pts"] == 3003
    assert message["time_base"] == "1/30000"
    assert message["media_time_s"] == pytest.approx(0.1001)
    assert message["frame"] == {"width": 6, "height": 4}
    assert message["results"]["text"]["boxes"][0]["score"] == 0.9
    assert message["drops"] == {"total": 3, "by_reason": {"edge:det": 2, "shutdown": 1}}
    latency = message["latency_ms"]
    assert set(latency) == {*STAGE_KEYS, *RUNTIME_LATENCY_KEYS, "total"}
    assert (latency["decode"], latency["infer"]) == (1.25, 10.0)
    assert latency["total"] >= 50.0  # captured 50 ms before the message was built
    assert message["publish_time"] >= message["capture_time"]


def parts_sum(latency: dict[str, float]) -> float:
    return sum(ms for key, ms in latency.items() if key != "total")


def test_the_message_ends_the_publish_part_so_the_parts_add_up_to_total():
    item = frame_item()  # captured 50 ms ago; its parts so far account for 14.5 ms of that
    item.timings_ms["publish"] = 1.0  # an earlier publish part (a stage before that marked one)
    message = build_result("p", item, StreamCounters())
    latency = message["latency_ms"]
    assert abs(latency["total"] - parts_sum(latency)) < 0.01
    # Everything after the item's last part ended is publish's: the 1 ms plus the ~34.5 ms not
    # accounted for yet (the frame's parts stopped at 15.5 ms of its 50 ms).
    assert latency["publish"] >= 1.0 + 50.0 - 15.5
    assert latency["total"] == pytest.approx((message["publish_time"] - message["capture_time"]) * 1000.0, abs=0.01)


def test_result_total_latency_is_never_negative(result_validator):
    item = frame_item()
    item.capture_time = time.time() + 3600  # a source clock ahead of ours
    message = build_result("p", item, StreamCounters())
    assert message["latency_ms"]["total"] == 0.0
    result_validator.validate(roundtrip(message))


def test_result_for_a_packet_without_pts_has_no_frame(result_validator):
    item = Item(stream_id="s", media=EncodedPacket(None, None, Fraction(1, 90000), True), capture_time=time.time())
    item.seq = 0
    message = build_result("p", item, StreamCounters())
    assert message["pts"] is None
    assert message["media_time_s"] is None
    assert "frame" not in message
    assert message["time_base"] == "1/90000"
    result_validator.validate(roundtrip(message))


def test_result_schema_catches_a_malformed_text_detection(result_validator):
    message = build_result("p", frame_item(), StreamCounters())
    message["results"]["text"]["boxes"][0]["box"] = [1.0, 2.0]
    assert not result_validator.is_valid(roundtrip(message))
    other = build_result("p", frame_item(), StreamCounters())
    other["results"]["vad"] = {"type": "voice_activity", "speech": True}  # other result types are free-form
    result_validator.validate(roundtrip(other))


def test_result_for_an_audio_window_with_speech_segments(result_validator):
    chunk = AudioChunk(np.zeros((1, 512), np.float32), pts=28160, time_base=Fraction(1, 16000), sample_rate=16000)
    item = Item(stream_id="mic", media=chunk, capture_time=time.time(), seq=55)
    item.results["speech"] = {"type": "speech_segments", "segments": [{"start_s": 0.802, "end_s": 1.662}]}
    message = build_result("vad", item, StreamCounters())
    result_validator.validate(roundtrip(message))
    assert (message["pts"], message["time_base"], message["media_time_s"]) == (28160, "1/16000", 1.76)
    assert "frame" not in message
    per_window = {"type": "speech_segments", "segments": [], "probability": 0.97}
    result_validator.validate(roundtrip({**message, "results": {"speech": per_window}}))
    for bad in (
        {"type": "speech_segments", "segments": [{"start_s": 0.8}]},
        {"type": "speech_segments"},
        {"type": "speech_segments", "segments": [], "probability": 1.5},
    ):
        assert not result_validator.is_valid(roundtrip({**message, "results": {"speech": bad}})), bad


@pytest.mark.parametrize(
    ("event", "kwargs"),
    [
        ("started", {}),
        ("error", {"message": "corrupt video"}),
        ("ended", {"reason": "eof", "counters": StreamCounters(decoded=10, published=8, drops={"shutdown": 2})}),
        ("ended", {"reason": "stopped"}),
        ("ended", {"reason": "error"}),
    ],
)
def test_events_validate(event_validator, event, kwargs):
    message = build_event("p", "cam-1", event, **kwargs)
    event_validator.validate(roundtrip(message))
    assert message["event"] == event
    assert message["schema_version"] == 1
    assert (message["pipeline"], message["stream_id"]) == ("p", "cam-1")


def test_ended_event_counts_frames():
    counters = StreamCounters(decoded=10, published=7, drops={"shutdown": 2, "edge:x": 1})
    message = build_event("p", "s", "ended", reason="eof", counters=counters)
    assert message["frames"] == {"decoded": 10, "published": 7, "dropped": 3}
    assert message["reason"] == "eof"
    assert "message" not in message


@pytest.mark.parametrize(
    ("field", "counters", "frames"),
    [
        (
            "consumed",
            StreamCounters(decoded=313, published=4, consumed=308, drops={"shutdown": 1}),
            {"decoded": 313, "published": 4, "dropped": 1, "consumed": 308},
        ),
        (
            "packets_dropped",
            StreamCounters(packets_dropped=50),
            {"decoded": 0, "published": 0, "dropped": 0, "packets_dropped": 50},
        ),
    ],
)
def test_ended_event_counts_consumed_items_and_dropped_packets_only_when_there_are_some(
    event_validator, field, counters, frames
):
    message = build_event("p", "s", "ended", reason="eof", counters=counters)
    event_validator.validate(roundtrip(message))
    assert message["frames"] == frames
    without = build_event("p", "s", "ended", reason="eof", counters=StreamCounters(decoded=1, published=1))
    assert field not in without["frames"]
    bad = {**message, "frames": {**message["frames"], field: 0}}
    assert not event_validator.is_valid(bad)  # absent, not zero, when there are none


def test_event_schema_rejects_unknown_events(event_validator):
    assert not event_validator.is_valid(roundtrip(build_event("p", "s", "paused")))


@pytest.mark.parametrize(
    ("stream_id", "token"),
    [
        ("cam-1", "cam-1"),
        ("front_door", "front_door"),
        ("cam.1", "cam_1"),
        ("front door", "front_door"),
        ("a.b c*d>e", "a_b_c_d_e"),
        ("", "_"),
    ],
)
def test_subject_token_sanitizes(stream_id, token):
    assert subject_token(stream_id) == token


def test_subjects_and_message_id():
    assert result_subject("streamgraph", "text-detect", "cam.1") == "streamgraph.text-detect.cam_1"
    assert events_subject("sg.prod", "p", "front door") == "sg.prod.p.front_door.events"
    assert message_id("p", "cam-1", "18c", 42) == "p.cam-1.18c.42"
    assert event_id("p", "cam-1", "18c", 0) == "p.cam-1.18c.e0"


def test_each_run_of_a_stream_has_its_own_id():
    # A stream started again (a service restart) must not reuse its previous run's message ids.
    first = new_run_id()
    time.sleep(0.001)
    assert new_run_id() != first


def test_encode_is_compact_json_and_rejects_nan():
    assert encode({"a": [1, 2], "b": "x"}) == b'{"a":[1,2],"b":"x"}'
    with pytest.raises(ValueError):
        encode({"score": float("nan")})


def test_result_schema_requires_every_latency_field_including_blocked_and_ordering(result_validator):
    item = frame_item()
    item.timings_ms.update({"blocked": 4.0, "ordering": 2.5})
    message = roundtrip(build_result("p", item, StreamCounters()))
    result_validator.validate(message)
    assert (message["latency_ms"]["blocked"], message["latency_ms"]["ordering"]) == (4.0, 2.5)
    schema = json.loads(RESULT_SCHEMA.read_text())
    assert set(schema["properties"]["latency_ms"]["required"]) == {*RUNTIME_LATENCY_KEYS, "total"}
    del message["latency_ms"]["ordering"]
    assert not result_validator.is_valid(message)
