"""pipeline.control: each refusal of a stream operation is a typed error (no HTTP status in it),
and NATS control maps the types to its replies' ``status``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from pipeline import control_nats
from pipeline.control import (
    FAILED,
    MAX_JSON_DEPTH,
    BadStreamRequest,
    MediaNotAllowed,
    NoStreamHost,
    StreamControl,
    StreamControlError,
    StreamEntry,
    StreamExists,
    StreamHost,
    StreamHostUnavailable,
    StreamLimitReached,
    StreamNotFound,
    StreamSpec,
    loads_request,
    reply_status,
)
from pipeline.errors import PipelineError
from pipeline.stage import Source

TYPED = {
    BadStreamRequest: ValueError,
    StreamNotFound: LookupError,
    StreamExists: ValueError,
    NoStreamHost: RuntimeError,
    StreamLimitReached: RuntimeError,
    StreamHostUnavailable: RuntimeError,
}


def control_errors() -> set[type[StreamControlError]]:
    """Every subclass of ``StreamControlError`` defined so far, at any depth."""
    found: set[type[StreamControlError]] = set()
    todo = [StreamControlError]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.add(sub)
            todo.append(sub)
    return found


@pytest.mark.parametrize("error", list(TYPED))
def test_each_error_is_a_stream_control_error_and_its_builtin(error: type[StreamControlError]) -> None:
    exc = error("why")
    assert isinstance(exc, StreamControlError) and isinstance(exc, PipelineError) and isinstance(exc, TYPED[error])
    assert exc.message == "why" and str(exc) == "why"
    assert not hasattr(exc, "status")  # the runtime names no HTTP status


class Host(StreamHost):
    def __init__(self, name: str, streams: list[str], failed: dict[str, str] | None = None) -> None:
        super().__init__(name, None)
        self.streams = streams
        self.failed = failed or {}

    async def add_stream(self, spec: StreamSpec) -> Source:
        self.streams.append(spec.id)
        return self

    async def remove_stream(self, stream_id: str) -> None:
        if stream_id in self.failed:
            del self.failed[stream_id]
        else:
            self.streams.remove(stream_id)

    def describe_streams(self) -> list[dict[str, Any]]:
        running = [{"id": s, "uri": "-", "type": "file", "state": "running"} for s in self.streams]
        failed = [{"id": s, "uri": "-", "type": "file", "state": FAILED, "error": e} for s, e in self.failed.items()]
        return running + failed


async def test_stream_control_raises_typed_errors() -> None:
    with pytest.raises(NoStreamHost, match="type: streams"):
        await StreamControl({}).add(StreamSpec(id="a", uri="x"))
    one = StreamControl({"cams": Host("cams", ["a"])}, open_streams=lambda: {"yaml"})
    with pytest.raises(BadStreamRequest, match="expected a JSON object, got list"):
        one.parse([])
    with pytest.raises(BadStreamRequest, match="id"):
        one.parse({"id": "no spaces", "uri": "x"})
    for taken in ("a", "yaml"):
        with pytest.raises(StreamExists, match=f"stream '{taken}' already exists"):
            await one.add(StreamSpec(id=taken, uri="x"))
    with pytest.raises(BadStreamRequest, match="no 'streams' stage 'other'"):
        await one.add(StreamSpec(id="b", uri="x", source="other"))
    with pytest.raises(StreamNotFound, match="no stream 'b'"):
        await one.remove("b")
    with pytest.raises(StreamNotFound, match="no stream 'b'"):
        one.describe("b")
    two = StreamControl({"x": Host("x", []), "y": Host("y", [])})
    with pytest.raises(BadStreamRequest, match="name one of"):
        await two.add(StreamSpec(id="b", uri="x"))
    await one.add(StreamSpec(id="b", uri="x"))
    await one.remove("a")
    assert one.describe("b") == {"id": "b", "uri": "-", "type": "file", "state": "running", "source": "cams"}


async def test_a_failed_stream_is_listed_its_id_free_to_use_again_and_removing_it_forgets_it() -> None:
    host = Host("cams", ["a"], failed={"gone": "cannot open gone.mp4: Invalid data"})
    control = StreamControl({"cams": host})
    assert [s["state"] for s in control.list()] == ["running", FAILED]
    assert control.describe("gone")["error"] == "cannot open gone.mp4: Invalid data"
    assert control.failure("gone") == "cannot open gone.mp4: Invalid data"
    assert control.failure("a") is None and control.failure("nosuch") is None
    assert control.is_running("a") and not control.is_running("gone")
    await control.add(StreamSpec(id="gone", uri="x"))  # not "already exists": it failed
    assert control.is_running("gone")
    host.streams.remove("gone")
    await control.remove("gone")  # DELETE of a failed stream: forgotten
    assert [s["id"] for s in control.list()] == ["a"]


@pytest.mark.parametrize("stream_id", ["../x", "a.b", "*", ">", "a b", "x" * 1024, ""])
async def test_ids_from_paths_and_requests_that_are_no_stream_ids_are_bad_requests(stream_id: str) -> None:
    control = StreamControl({"cams": Host("cams", [])})
    expected = r"^id: expected a stream id: 1 to 128 letters, digits, '-' or '_', got "
    with pytest.raises(BadStreamRequest, match=expected):
        control.check_id(stream_id)
    with pytest.raises(BadStreamRequest, match=expected):
        control.describe(stream_id)
    with pytest.raises(BadStreamRequest, match=expected):
        await control.remove(stream_id)
    with pytest.raises(BadStreamRequest, match=expected):
        control.parse({"id": stream_id, "uri": "x"})


def test_nats_maps_every_error_type_to_a_status() -> None:
    expected = {
        BadStreamRequest: 400,
        MediaNotAllowed: 403,
        StreamNotFound: 404,
        StreamExists: 409,
        NoStreamHost: 409,
        StreamLimitReached: 409,
        StreamHostUnavailable: 503,
    }
    assert {error: reply_status(error("x")) for error in expected} == expected
    assert set(TYPED) | set(expected) == {e for e in control_errors() if e.__module__ == "pipeline.control"}

    class ThirdPartyRefusal(StreamNotFound):
        pass

    assert reply_status(ThirdPartyRefusal("x")) == 404  # its nearest listed base's
    assert reply_status(StreamControlError("x")) == 400


class Msg:
    def __init__(self, subject: str, data: bytes) -> None:
        self.subject, self.data, self.reply = subject, data, "inbox"


class FakeBus:
    prefix = "streamgraph"

    def __init__(self) -> None:
        self.client = self
        self.replies: list[dict[str, Any]] = []

    async def publish(self, subject: str, data: bytes) -> None:
        self.replies.append(json.loads(data))


async def test_nats_replies_carry_the_status_of_the_error() -> None:
    runner: Any = type("R", (), {})()
    runner.graph = type("G", (), {"pipeline": "p"})()
    runner.control = StreamControl({"cams": Host("cams", ["a"])})
    bus = FakeBus()
    nats = control_nats.NatsControl(bus, runner)  # type: ignore[arg-type]  # a fake bus
    requests = [
        ("add", b"{"),
        ("add", json.dumps({"id": "a", "uri": "x"}).encode()),
        ("remove", json.dumps({"id": "b"}).encode()),
        ("remove", json.dumps({"id": "b", "more": 1}).encode()),
        ("add", json.dumps({"id": "c", "uri": "x"}).encode()),
        ("add", json.dumps({"id": "a.b", "uri": "x"}).encode()),
        ("remove", json.dumps({"id": "*"}).encode()),
        ("add", b"[" * 100_000),
    ]
    for operation, data in requests:
        await nats._on_request(Msg(f"streamgraph.control.streams.{operation}", data))
    statuses = [reply.get("status") for reply in bus.replies]
    assert statuses == [400, 409, 404, 400, None, 400, 400, 400]
    assert bus.replies[5]["error"].startswith("id: expected a stream id")
    assert bus.replies[6]["error"].startswith("id: expected a stream id")
    assert bus.replies[7]["error"].startswith("body is not valid JSON")
    assert bus.replies[1]["error"] == "stream 'a' already exists"
    assert bus.replies[3]["error"] == 'remove takes {"id": "<stream id>"} and nothing else'
    assert bus.replies[4]["ok"] is True and bus.replies[4]["stream"]["id"] == "c"


@pytest.mark.parametrize(
    ("data", "parsed"),
    [
        (b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, "deep"),
        (b'{"a": "' + b"[{" * 100 + b'"}', {"a": "[{" * 100}),  # brackets in strings do not nest
        (b'{"a": "\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', {"a": '"' + "[" * 38}),  # nor after an escaped quote
    ],
)
def test_a_request_body_within_the_depth_is_parsed(data: bytes, parsed: Any) -> None:
    body = loads_request(data)
    if parsed == "deep":
        for _ in range(MAX_JSON_DEPTH - 1):
            body = body[0]
        assert body == []
    else:
        assert body == parsed


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), f"nested too deeply (more than {MAX_JSON_DEPTH}"),
        (b'{"a": ' * 20 + b"[" * 20, "nested too deeply"),
        (b"{bad", "Expecting property name"),
        (b"\xff", "can't decode"),
    ],
)
def test_a_request_body_too_deep_or_not_json_is_refused_with_the_reason(data: bytes, says: str) -> None:
    with pytest.raises(BadStreamRequest) as refused:
        loads_request(data)
    assert refused.value.message.startswith("body is not valid JSON: ") and says in refused.value.message


def test_options_a_stream_sets_itself_are_refused_in_the_yaml_too() -> None:
    with pytest.raises(ValidationError, match="'path' is set by the stream's 'uri', not by its options"):
        StreamEntry.model_validate({"id": "a", "uri": "x.mp4", "options": {"path": "/etc/hostname"}})
    assert StreamEntry.model_validate({"id": "a", "uri": "x.mp4", "options": {"loop": True}}).options == {"loop": True}
