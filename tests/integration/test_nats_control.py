"""The NATS control subjects against a real nats-server: the token rule, the request envelope
(``pipeline``, ``token``), options a stream's own fields set, and bodies nested too deeply.

A real runner (a ``streams`` source, decode, a counting sink) answers through ``NatsControl`` on a
real bus; a plain nats-py client asks, as any NATS client would.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from pipeline.bus import Bus
from pipeline.config import NatsConfig, parse_config
from pipeline.control_nats import NatsControl, control_subject
from pipeline.runner import Runner
from pipeline.service import build

from .support import GUARD_S

TOKEN = "n4ts-t0ken"
PIPELINE = "nats-control-test"


@dataclass
class Control:
    runner: Runner
    client: Client
    prefix: str

    async def ask(self, operation: str, body: Any) -> dict[str, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        reply = await self.client.request(control_subject(self.prefix, operation), data, timeout=GUARD_S)
        answer: dict[str, Any] = json.loads(reply.data)
        return answer


@pytest.fixture()
async def control(nats_server: Any, sample_video: Path) -> AsyncIterator[Control]:
    config = parse_config(
        {
            "pipeline": PIPELINE,
            "stages": [
                {"name": "src", "type": "streams", "params": {"streams": []}},
                {"name": "decode", "type": "decode", "inputs": ["src"]},
                {"name": "sink", "class": "tests.fakes:CountingSink", "inputs": ["decode"]},
            ],
        },
        base_dir=sample_video.parent,
    )
    prefix = f"ctl{uuid.uuid4().hex[:10]}"
    bus = await Bus.connect(NatsConfig(url=nats_server.url, prefix=prefix), pipeline=PIPELINE)
    runner = Runner(build(config), base_dir=sample_video.parent)
    task = asyncio.create_task(runner.run())
    answering = NatsControl(bus, runner, token=TOKEN)
    await answering.start()
    client = await nats.connect(nats_server.url)
    await asyncio.wait_for(runner.started.wait(), GUARD_S)
    try:
        yield Control(runner, client, prefix)
    finally:
        await client.drain()
        await answering.close()
        runner.request_stop()
        await asyncio.wait_for(task, GUARD_S)
        await bus.close()


REFUSED = {
    "ok": False,
    "status": 401,
    "error": 'missing or wrong token: with api.token set, a control request carries "token": "<token>"',
}


async def test_with_a_token_configured_every_request_must_carry_it(control: Control, sample_video: Path) -> None:
    stream = {"id": "clip", "uri": sample_video.name, "options": {"rate": "native", "loop": True}}
    for wrong in ({}, {"token": "wrong"}, {"token": TOKEN.upper()}, {"token": 5}, {"token": None}):
        assert await control.ask("add", {**stream, **wrong}) == REFUSED, wrong
        assert await control.ask("list", wrong) == REFUSED, wrong
    assert await control.ask("list", b"") == REFUSED  # an empty request too
    assert await control.ask("add", [stream]) == REFUSED  # not even an object: no token in it
    assert control.runner.control.list() == []  # nothing was started

    added = await control.ask("add", {**stream, "token": TOKEN, "pipeline": PIPELINE})
    assert added["ok"] and added["stream"]["id"] == "clip", added
    assert await control.ask("remove", {"id": "clip"}) == REFUSED
    assert await control.ask("remove", {"id": "clip", "token": "wrong"}) == REFUSED
    assert [s["id"] for s in control.runner.control.list()] == ["clip"]  # still running
    listed = await control.ask("list", {"token": TOKEN})
    assert listed["ok"] and [s["id"] for s in listed["streams"]] == ["clip"]
    removed = await control.ask("remove", {"id": "clip", "token": TOKEN})
    assert removed == {"ok": True, "id": "clip", "removed": True}
    assert control.runner.control.list() == []


@pytest.mark.parametrize(
    ("pipeline", "said"), [(5, "a number"), (None, "null"), (["x"], "an array"), (True, "a boolean")]
)
async def test_a_pipeline_that_is_not_a_name_is_answered_with_the_reason(
    control: Control, sample_video: Path, pipeline: Any, said: str
) -> None:
    body = {"id": "clip", "uri": sample_video.name, "pipeline": pipeline, "token": TOKEN}
    assert await control.ask("add", body) == {
        "ok": False,
        "status": 400,
        "error": f"pipeline: expected the name of a pipeline (a string), got {said}",
    }
    assert control.runner.control.list() == []


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"path": "/etc/hostname"}, "options: 'path' is set by the stream's 'uri', not by its options"),
        ({"id": "other"}, "options: 'id' is set by the stream's 'id', not by its options"),
        ({"url": "rtsp://h/x"}, "options: 'url' is set by the stream's 'uri', not by its options"),
    ],
)
async def test_options_the_stream_itself_sets_are_refused(
    control: Control, sample_video: Path, options: dict[str, Any], says: str
) -> None:
    body = {"id": "clip", "uri": sample_video.name, "options": options, "token": TOKEN}
    assert await control.ask("add", body) == {"ok": False, "status": 400, "error": says}
    assert control.runner.control.list() == []


DEEP = "body is not valid JSON: nested too deeply (more than 32 levels)"


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b"[" * 100_000,
        b'{"id": "a", "uri": "x.mp4", "options": {"loop": ' + b"[" * 990 + b"]" * 990 + b"}}",
    ],
)
async def test_a_body_nested_too_deeply_is_refused_with_the_reason(control: Control, body: bytes) -> None:
    with_token = body.replace(b'{"id"', b'{"token": "' + TOKEN.encode() + b'", "id"', 1)
    assert await control.ask("add", with_token) == {"ok": False, "status": 400, "error": DEEP}


async def test_a_body_as_deep_as_allowed_is_read(control: Control, sample_video: Path) -> None:
    """32 levels pass the depth check and reach the option check, which names the option."""
    deep = "[" * 30 + "]" * 30  # the body, its options, and 30 more levels
    data = f'{{"token": "{TOKEN}", "id": "a", "uri": "{sample_video.name}", "options": {{"loop": {deep}}}}}'
    answer = await control.ask("add", data.encode())
    assert answer["status"] == 400 and answer["error"].startswith("options.loop"), answer
