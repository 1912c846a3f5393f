"""RemoteEngine's own logic (retries, down and back, checks against the card) over a scripted
transport. That it works with real servers is tests/remote's job."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from pipeline.engines import RemoteEngine, engine_entry
from pipeline.engines.remote import engine as engine_module
from pipeline.engines.remote.transport import BadAnswer, Rejected, ServerModel, ServerTensor, Unavailable
from pipeline.errors import ConfigError, EngineError
from pipeline.modelcard import load_model_card
from tests.fakes import ScriptedTransport

MODELS = Path(__file__).resolve().parents[3] / "models"
DET_INPUT = ServerTensor("x", "FP32", "float32", [-1, 3, -1, -1])
DET_OUTPUT = ServerTensor("sigmoid_0.tmp_0", "FP32", "float32", [-1, 1, -1, -1])


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def monotonic(self) -> float:
        return self.t


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(engine_module, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


def make_engine(model: ServerModel | None = None, script: list[Exception | None] | None = None, **server: Any):
    card = load_model_card("pp-ocrv4-det", MODELS)
    settings = {"url": "http://127.0.0.1:1", "model": "pp_ocrv4_det", "backoff_s": 0.001, "max_backoff_s": 2.0}
    options = engine_entry("triton").options.model_validate({"server": {**settings, **server}})
    transport = ScriptedTransport(options.server, model or ServerModel([DET_INPUT], [DET_OUTPUT], 8), script)
    return RemoteEngine(card, options, transport), transport


def batch(size: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.zeros((size, 3, 32, 32), np.float32)}


async def test_open_checks_the_model_on_the_server_against_the_card():
    engine, _ = make_engine(ServerModel([ServerTensor("x", "FP16", "float16", [-1, 3, -1, -1])], [DET_OUTPUT]))
    with pytest.raises(ConfigError) as error:
        await engine.open()
    assert error.value.path == "params.server"
    assert str(error.value) == (
        "params.server: model 'pp_ocrv4_det' on http://127.0.0.1:1: input 'x' is FP16, the card says float32"
    )


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (ServerModel([ServerTensor("images", "FP32", "float32", [-1, 3, -1, -1])], [DET_OUTPUT]), "inputs are"),
        (ServerModel([DET_INPUT], [ServerTensor("y", "FP32", "float32", [-1])]), "no output 'sigmoid_0.tmp_0'"),
        (ServerModel([ServerTensor("x", "FP32", "float32", [-1, 1, -1, -1])], [DET_OUTPUT]), "has shape [-1, 1"),
    ],
)
async def test_each_kind_of_mismatch_is_named(model: ServerModel, expected: str):
    engine, _ = make_engine(model)
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[")):
        await engine.open()


async def test_a_server_without_metadata_leaves_the_card_unchecked_and_the_batch_limit_comes_from_it():
    engine, _ = make_engine(ServerModel())
    await engine.open()
    assert engine.metadata().max_batch is None
    engine, _ = make_engine()
    await engine.open()
    assert engine.metadata().max_batch == 8


async def test_a_model_the_server_does_not_have_is_a_config_error():
    engine, transport = make_engine()
    transport.ready_script = [Rejected("the server has no such model (HTTP 404)")]
    with pytest.raises(ConfigError, match=r"params\.server: model 'pp_ocrv4_det' .*no such model"):
        await engine.open()


async def test_open_waits_for_a_server_still_starting_then_gives_up_by_the_startup_timeout():
    engine, transport = make_engine()
    transport.ready_script = [Unavailable("connection refused"), None]
    await engine.open()
    engine, transport = make_engine(startup_timeout_s=0)
    transport.ready_script = [Unavailable("connection refused")] * 3
    with pytest.raises(Unavailable, match="not ready after 0 s: connection refused"):
        await engine.open()


async def test_a_transport_error_is_tried_again_and_a_refusal_is_not():
    engine, transport = make_engine(script=[Unavailable("reset"), Unavailable("reset")], retries=2)
    out = await engine.infer_async(batch())
    assert transport.calls == 3 and out["sigmoid_0.tmp_0"].shape == (2, 1, 32, 32)
    engine, transport = make_engine(script=[Rejected("HTTP 400: bad shape")])
    with pytest.raises(Rejected, match="HTTP 400"):
        await engine.infer_async(batch())
    assert transport.calls == 1
    assert engine.not_ready() is None  # a refusal is about the request, not the server


async def test_a_server_down_fails_batches_at_once_probes_it_and_comes_back(clock: Clock):
    engine, transport = make_engine(script=[Unavailable("refused")] * 3, retries=2)
    with pytest.raises(EngineError, match="refused"):
        await engine.infer_async(batch())
    assert transport.calls == 3
    assert "is down: refused" in (engine.not_ready() or "")
    with pytest.raises(Unavailable):  # no request while down, until the next probe is due
        await engine.infer_async(batch())
    assert transport.calls == 3
    clock.t += 2.0
    transport.script = [Unavailable("refused")]
    with pytest.raises(Unavailable):  # one probe, no retries
        await engine.infer_async(batch())
    assert transport.calls == 4
    clock.t += 2.0
    await engine.infer_async(batch())  # the probe is answered: up again
    assert engine.not_ready() is None
    await engine.infer_async(batch())
    assert transport.calls == 6


async def test_an_answer_of_the_wrong_shape_fails_the_batch_with_the_output_named():
    engine, transport = make_engine()

    async def wrong(feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        return {"sigmoid_0.tmp_0": np.zeros((1, 1, 32, 32), np.float32)}

    transport.infer = wrong  # type: ignore[method-assign]
    with pytest.raises(BadAnswer, match=r"'sigmoid_0.tmp_0' with shape \[1, 1, 32, 32\], expected \[2, 1, height"):
        await engine.infer_async(batch(2))


def test_server_options_refuse_an_unknown_scheme_and_http_only_engines_refuse_grpc():
    with pytest.raises(ValueError, match="grpc://host:port"):
        engine_entry("triton").options.model_validate({"server": {"url": "tcp://x:1", "model": "m"}})
    with pytest.raises(ValueError, match="HTTP"):
        engine_entry("tfserving").options.model_validate({"server": {"url": "grpc://x:1", "model": "m"}})
    options = engine_entry("kserve").options.model_validate({"server": {"url": "grpc://x:1/", "model": "m"}})
    assert options.server.grpc and options.server.url == "grpc://x:1" and options.server.max_in_flight == 2
