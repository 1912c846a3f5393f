"""stages.infer with a model on an inference server, over a scripted transport: batches in flight
at once, a server down costs counted items and readiness, not the stage. Against real servers:
tests/remote."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

import stages.infer.infer as infer_module
from pipeline.engines import RemoteEngine
from pipeline.engines.remote.transport import ServerModel, Unavailable
from pipeline.media import Item
from pipeline.tensors import ModelOutput, PreparedTensor
from stages.infer import Infer, InferParams
from tests.fakes import ScriptedTransport

SERVER = {"url": "http://127.0.0.1:1", "model": "det", "backoff_s": 0.001, "retries": 0, "max_in_flight": 2}


async def started(make_ctx: Any, monkeypatch: pytest.MonkeyPatch, **server: Any) -> tuple[Infer, ScriptedTransport]:
    made: list[ScriptedTransport] = []

    def load(name: str, card: Any, options: Any, settings: Any) -> RemoteEngine:
        made.append(ScriptedTransport(options.server, ServerModel()))
        return RemoteEngine(card, options, made[0])

    monkeypatch.setattr(infer_module, "load_engine", load)
    params = InferParams(model="pp-ocrv4-det", engine="triton", server={**SERVER, **server}, batch={"max_size": 2})
    stage = Infer("det", params)
    await stage.start(make_ctx("det", input_stages=("prep",)))
    return stage, made[0]


def item(stream: str, seq: int) -> Item:
    tensor = PreparedTensor(np.zeros((3, 32, 32), np.float32))
    return Item(stream_id=stream, media=None, capture_time=0.0, seq=seq, tensors={"prep": tensor})


async def test_batches_go_to_the_server_max_in_flight_at_once(make_ctx, monkeypatch):
    stage, transport = await started(make_ctx, monkeypatch)
    assert stage.max_in_flight == 3 * 2  # two batches out, one filling
    transport.gate = asyncio.Event()
    work = [asyncio.create_task(stage.process(item(s, 0))) for s in "abcdef"]
    for _ in range(50):
        await asyncio.sleep(0.01)
        if transport.in_flight == 2:
            break
    assert transport.in_flight == 2  # the third batch waits for a place
    transport.gate.set()
    outs = await asyncio.gather(*work)
    assert transport.most_in_flight == 2 and transport.calls == 1 + 3  # the warm-up, then three batches
    assert all(isinstance(out.tensors["det"], ModelOutput) for (out,) in outs)
    await stage.stop()


async def test_a_server_down_drops_and_counts_each_item_and_the_stage_says_it_is_not_ready(make_ctx, monkeypatch):
    stage, transport = await started(make_ctx, monkeypatch, max_backoff_s=60)
    transport.script = [Unavailable("connection refused")]
    assert await stage.process(item("a", 0)) == ()
    assert await stage.process(item("a", 1)) == ()  # failed at once: no request while down
    assert transport.calls == 2  # the warm-up and the one that found it down
    counters = stage.ctx.stats.stream("a")
    assert counters.drops == {"error:engine:det": 2}
    assert "is down: connection refused" in (stage.not_ready() or "")
    await stage.stop()


def test_engine_failures_are_logged_once_per_message_and_window_with_what_was_suppressed():
    import logging

    from pipeline.errors import EngineError
    from stages.infer.failures import EngineFailureLog

    class Recorder(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

    logger = logging.getLogger("test.engine_failures")
    recorder = Recorder()
    logger.addHandler(recorder)
    failures = EngineFailureLog(logger, "det", every_s=3600)
    for _ in range(3):
        failures.log(EngineError("server down"))
    failures.log(EngineError("bad answer"))
    assert recorder.lines == [
        "server down; the item is counted as error:engine:det",
        "bad answer; the item is counted as error:engine:det (2 more items failed as logged before meanwhile)",
    ]
