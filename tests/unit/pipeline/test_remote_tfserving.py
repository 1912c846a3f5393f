"""TfServingRest against a local aiohttp server that replays TF Serving's recorded answers.

The bodies under fixtures/tfserving are copied verbatim from the tensorflow/serving repository
(its REST API documentation and the tests of its REST handler: see the README there), so this
checks our parsing of what TF Serving really sends. It is not TF Serving: a test against a real
server is separate. Bodies written here rather than recorded (a loading model, KServe v1's status)
say so where they are made.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pipeline.bus import free_port
from pipeline.engines.remote import BadAnswer, Rejected, ServerModel, ServerOptions, ServerTensor, Unavailable
from pipeline.engines.remote.tfserving import TfServingRest

FIXTURES = Path(__file__).parent / "fixtures" / "tfserving"
MODEL = "/v1/models/half_plus_two"


def recorded(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@dataclass
class Replay:
    """Answers ``(method, path)`` with a fixed status and body; keeps the bodies it was sent."""

    answers: dict[tuple[str, str], tuple[int, bytes]] = field(default_factory=dict)
    received: list[tuple[str, str, bytes]] = field(default_factory=list)
    delay_s: float = 0.0

    def on(self, method: str, path: str, body: bytes | Any, status: int = 200) -> None:
        self.answers[(method, path)] = (status, body if isinstance(body, bytes) else json.dumps(body).encode())

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((request.method, request.path, await request.read()))
        await asyncio.sleep(self.delay_s)
        status, body = self.answers.get((request.method, request.path), (404, b'{"error": "no route"}'))
        return web.Response(status=status, body=body, content_type="application/json")


@pytest.fixture()
async def replay() -> AsyncIterator[tuple[Replay, str]]:
    state = Replay()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    async with TestServer(app, host="127.0.0.1") as server:
        yield state, f"http://127.0.0.1:{server.port}"


async def transport_for(url: str, **options: Any) -> TfServingRest:
    transport = TfServingRest(ServerOptions(url=url, model="half_plus_two", **options))
    await transport.open()
    return transport


# --- model status ---------------------------------------------------------------------------------


async def test_available_model_is_ready(replay: tuple[Replay, str]) -> None:
    state, url = replay
    state.on("GET", MODEL, recorded("status_available.json"))
    transport = await transport_for(url)
    try:
        await transport.wait_ready()
    finally:
        await transport.close()


async def test_version_goes_in_the_url(replay: tuple[Replay, str]) -> None:
    state, url = replay
    state.on("GET", f"{MODEL}/versions/123", recorded("status_available.json"))
    transport = await transport_for(url, version="123")
    try:
        await transport.wait_ready()
    finally:
        await transport.close()
    assert state.received[0][1] == f"{MODEL}/versions/123"


async def test_loading_model_is_unavailable(replay: tuple[Replay, str]) -> None:
    state, url = replay
    status = json.loads(recorded("status_available.json"))
    status["model_version_status"][0]["state"] = "LOADING"  # written here: no recorded answer has it
    state.on("GET", MODEL, status)
    transport = await transport_for(url)
    try:
        with pytest.raises(Unavailable, match="123 LOADING"):
            await transport.wait_ready()
    finally:
        await transport.close()


async def test_unknown_model_is_rejected(replay: tuple[Replay, str]) -> None:
    state, url = replay
    state.on("GET", MODEL, recorded("error_not_found.json"), status=404)
    transport = await transport_for(url)
    try:
        with pytest.raises(Rejected, match=r"no model 'half_plus_two'.*Servable not found for request: Latest\(half\)"):
            await transport.wait_ready()
    finally:
        await transport.close()


@pytest.mark.parametrize(("ready", "fails"), [(True, False), (False, True)])
async def test_kserve_v1_status(replay: tuple[Replay, str], ready: bool, fails: bool) -> None:
    state, url = replay
    state.on("GET", MODEL, {"name": "half_plus_two", "ready": ready})  # KServe v1's form, written here
    transport = await transport_for(url)
    try:
        if fails:
            with pytest.raises(Unavailable, match="not ready"):
                await transport.wait_ready()
        else:
            await transport.wait_ready()
    finally:
        await transport.close()


# --- metadata -------------------------------------------------------------------------------------


async def test_metadata_lists_the_serving_default_signature(replay: tuple[Replay, str]) -> None:
    state, url = replay
    state.on("GET", f"{MODEL}/metadata", recorded("metadata_half_plus_two.json"))
    transport = await transport_for(url)
    try:
        model = await transport.describe()
    finally:
        await transport.close()
    # Named by the signature's keys (what predict takes), not the graph's x:0 and y:0.
    assert model == ServerModel(
        inputs=[ServerTensor(name="x", datatype="DT_FLOAT", dtype="float32", shape=[-1, 1])],
        outputs=[ServerTensor(name="y", datatype="DT_FLOAT", dtype="float32", shape=[-1, 1])],
    )


@pytest.mark.parametrize(("status", "body"), [(404, b'{"error": "Not Found"}'), (200, b"<html>predict only</html>")])
async def test_no_metadata_checks_nothing(
    replay: tuple[Replay, str], caplog: pytest.LogCaptureFixture, status: int, body: bytes
) -> None:
    state, url = replay
    state.on("GET", f"{MODEL}/metadata", body, status=status)
    transport = await transport_for(url)
    try:
        with caplog.at_level(logging.INFO, logger="streamgraph.engine.remote"):
            assert await transport.describe() == ServerModel()
    finally:
        await transport.close()
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "not checked" in caplog.records[0].getMessage()


async def test_unknown_rank_checks_nothing(replay: tuple[Replay, str]) -> None:
    state, url = replay
    metadata = json.loads(recorded("metadata_half_plus_two.json"))
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    # Written here: serving_default's input given the unknown-rank shape of classify_x_to_y's.
    signatures["serving_default"]["inputs"]["x"]["tensor_shape"] = copy.deepcopy(
        signatures["classify_x_to_y"]["inputs"]["inputs"]["tensor_shape"]
    )
    state.on("GET", f"{MODEL}/metadata", metadata)
    transport = await transport_for(url)
    try:
        assert await transport.describe() == ServerModel()
    finally:
        await transport.close()


async def test_no_serving_default_is_rejected(replay: tuple[Replay, str]) -> None:
    state, url = replay
    metadata = json.loads(recorded("metadata_half_plus_two.json"))
    del metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    state.on("GET", f"{MODEL}/metadata", metadata)
    transport = await transport_for(url)
    try:
        with pytest.raises(Rejected, match=r"no signature 'serving_default'.*classify_x2_to_y3"):
            await transport.describe()
    finally:
        await transport.close()


# --- predict --------------------------------------------------------------------------------------


async def test_predict_one_output(replay: tuple[Replay, str]) -> None:
    state, url = replay
    state.on("GET", f"{MODEL}/metadata", recorded("metadata_half_plus_two.json"))
    state.on("POST", f"{MODEL}:predict", recorded("predict_single_output.json"))
    transport = await transport_for(url)
    try:
        await transport.describe()
        result = await transport.infer({"x": np.array([3.0, 4.0], dtype=np.float32)}, ["y"])
    finally:
        await transport.close()
    method, path, body = state.received[-1]
    assert (method, path) == ("POST", f"{MODEL}:predict")
    # The columnar form, inputs by name: the recorded request sent {"inputs": [3.0, 4.0]}.
    assert json.loads(body) == {"inputs": {"x": [3.0, 4.0]}}
    assert result["y"].dtype == np.float32
    np.testing.assert_array_equal(result["y"], [3.5, 4.0])
    assert transport.counts.requests == 1
    assert transport.counts.sent == len(body)
    assert transport.counts.received == len(recorded("predict_single_output.json"))


async def test_predict_dtype_comes_from_metadata(replay: tuple[Replay, str]) -> None:
    """Whole numbers in the answer are still float32 where the signature says DT_FLOAT."""
    state, url = replay
    state.on("GET", f"{MODEL}/metadata", recorded("metadata_half_plus_two.json"))
    state.on("POST", f"{MODEL}:predict", recorded("predict_single_output_int.json"))
    transport = await transport_for(url)
    try:
        await transport.describe()
        result = await transport.infer({"x": np.zeros((2, 1), np.float32)}, ["y"])
    finally:
        await transport.close()
    assert result["y"].dtype == np.float32
    assert result["y"].shape == (2, 3, 2)


async def test_predict_without_metadata_guesses_the_dtype(replay: tuple[Replay, str]) -> None:
    state, url = replay
    state.on("POST", f"{MODEL}:predict", recorded("predict_single_output_int.json"))
    transport = await transport_for(url)
    try:
        result = await transport.infer({"x": np.zeros((2, 1), np.float32)}, ["y"])
    finally:
        await transport.close()
    assert result["y"].dtype == np.int64
    np.testing.assert_array_equal(result["y"], [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]])


async def test_predict_several_outputs(replay: tuple[Replay, str]) -> None:
    state, url = replay
    state.on("POST", f"{MODEL}:predict", recorded("predict_multi_output.json"))
    transport = await transport_for(url)
    try:
        result = await transport.infer(
            {"a": np.zeros((2, 3), np.uint8), "b": np.ones(2, bool)},
            ["float_tensor", "int_tensor", "double_scalar_tensor"],
        )
    finally:
        await transport.close()
    # Only the outputs asked for (the answer also has strings), each by name.
    assert sorted(result) == ["double_scalar_tensor", "float_tensor", "int_tensor"]
    np.testing.assert_array_equal(result["float_tensor"], np.array([[1.0], [2.0]], np.float32))
    assert result["float_tensor"].dtype == np.float32
    np.testing.assert_array_equal(result["double_scalar_tensor"], [8.0, 9.0])
    assert result["int_tensor"].dtype == np.int64
    assert result["int_tensor"].shape == (2, 3, 2)
    assert json.loads(state.received[-1][2]) == {"inputs": {"a": [[0, 0, 0], [0, 0, 0]], "b": [True, True]}}


async def test_predict_missing_output_is_left_to_the_engine(replay: tuple[Replay, str]) -> None:
    state, url = replay
    state.on("POST", f"{MODEL}:predict", recorded("predict_multi_output.json"))
    transport = await transport_for(url)
    try:
        result = await transport.infer({"x": np.zeros(2, np.float32)}, ["float_tensor", "scores"])
    finally:
        await transport.close()
    assert sorted(result) == ["float_tensor"]  # RemoteEngine's check_answer names 'scores'


async def test_one_unnamed_tensor_for_two_outputs_is_a_bad_answer(replay: tuple[Replay, str]) -> None:
    state, url = replay
    state.on("POST", f"{MODEL}:predict", recorded("predict_single_output.json"))
    transport = await transport_for(url)
    try:
        with pytest.raises(BadAnswer, match="one unnamed tensor"):
            await transport.infer({"x": np.zeros(2, np.float32)}, ["y", "z"])
    finally:
        await transport.close()


async def test_predict_keeps_nan_and_infinity(replay: tuple[Replay, str]) -> None:
    state, url = replay
    state.on("POST", f"{MODEL}:predict", b'{"outputs": [NaN, Infinity, -Infinity, 1.5]}')
    transport = await transport_for(url)
    try:
        result = await transport.infer({"x": np.array([np.nan, np.inf], np.float32)}, ["y"])
    finally:
        await transport.close()
    assert b"[NaN,Infinity]" in state.received[-1][2]
    np.testing.assert_array_equal(result["y"], np.array([np.nan, np.inf, -np.inf, 1.5], np.float32))


# --- errors ---------------------------------------------------------------------------------------


async def test_error_body_is_rejected_with_its_text(replay: tuple[Replay, str]) -> None:
    state, url = replay
    state.on("POST", f"{MODEL}:predict", recorded("error_not_found.json"), status=404)
    transport = await transport_for(url)
    try:
        with pytest.raises(Rejected, match=r"HTTP 404: Servable not found for request: Latest\(half\)$"):
            await transport.infer({"x": np.zeros(2, np.float32)}, ["y"])
    finally:
        await transport.close()


async def test_error_body_with_200_is_rejected(replay: tuple[Replay, str]) -> None:
    state, url = replay
    state.on("POST", f"{MODEL}:predict", recorded("error_not_found.json"))
    transport = await transport_for(url)
    try:
        with pytest.raises(Rejected, match="Servable not found"):
            await transport.infer({"x": np.zeros(2, np.float32)}, ["y"])
    finally:
        await transport.close()


async def test_long_error_text_is_trimmed(replay: tuple[Replay, str]) -> None:
    state, url = replay
    state.on("POST", f"{MODEL}:predict", b"Traceback (most recent call last):\n" + b"  x\n" * 500, status=500)
    transport = await transport_for(url)
    try:
        with pytest.raises(Rejected) as caught:
            await transport.infer({"x": np.zeros(2, np.float32)}, ["y"])
    finally:
        await transport.close()
    assert "HTTP 500: Traceback (most recent call last): x x" in str(caught.value)
    assert len(str(caught.value)) < 400 and "\n" not in str(caught.value)


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_busy_server_is_unavailable(replay: tuple[Replay, str], status: int) -> None:
    state, url = replay
    state.on("POST", f"{MODEL}:predict", b"<html>Service Unavailable</html>", status=status)
    transport = await transport_for(url)
    try:
        with pytest.raises(Unavailable, match=f"HTTP {status}"):
            await transport.infer({"x": np.zeros(2, np.float32)}, ["y"])
    finally:
        await transport.close()


async def test_slow_server_is_unavailable(replay: tuple[Replay, str]) -> None:
    state, url = replay
    state.on("POST", f"{MODEL}:predict", recorded("predict_single_output.json"))
    state.delay_s = 1.0
    transport = await transport_for(url, timeout_s=0.1)
    try:
        with pytest.raises(Unavailable, match=r"no answer within 0.1 s"):
            await transport.infer({"x": np.zeros(2, np.float32)}, ["y"])
    finally:
        await transport.close()


async def test_connection_refused_is_unavailable() -> None:
    transport = await transport_for(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(Unavailable):
            await transport.wait_ready()
        with pytest.raises(Unavailable):
            await transport.infer({"x": np.zeros(2, np.float32)}, ["y"])
    finally:
        await transport.close()


async def test_not_json_is_a_bad_answer(replay: tuple[Replay, str]) -> None:
    state, url = replay
    state.on("POST", f"{MODEL}:predict", b"<html>hello</html>")
    transport = await transport_for(url)
    try:
        with pytest.raises(BadAnswer, match="expected JSON"):
            await transport.infer({"x": np.zeros(2, np.float32)}, ["y"])
    finally:
        await transport.close()
