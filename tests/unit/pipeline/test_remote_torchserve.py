"""The TorchServe tensor handler (servers/torchserve/tensor_handler.py) called directly, and
TorchServeRest against a small aiohttp server that hands each request to that handler.

That server is NOT TorchServe: it stands in for TorchServe's frontend as far as this contract
goes (``/ping``, ``/predictions/{model}``, the handler's per-request status and content type,
TorchServe's 404 body for an unknown model), so the handler and the client are checked together
where TorchServe and Java are not installed. tests/remote/test_torchserve.py runs the real one.
"""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pipeline.bus import free_port
from pipeline.engines.remote import BadAnswer, Rejected, ServerModel, ServerOptions, Unavailable
from pipeline.engines.remote.torchserve import TorchServeRest, read_npz, write_npz
from pipeline.modelcard import load_card
from pipeline.modelstore import model_path

ROOT = Path(__file__).resolve().parents[3]
HANDLER = ROOT / "servers" / "torchserve" / "tensor_handler.py"
INPUT, OUTPUT = "x", "sigmoid_0.tmp_0"
MODEL = "pp_ocrv4_det"
NO_WORKER = json.dumps(
    {
        "code": 503,
        "type": "ServiceUnavailableException",
        "message": 'Model "det" has no worker to serve inference request. Please use scale workers API to add '
        "workers. If this is a sequence inference, please check if it is closed, or expired; or exceeds "
        "maxSequenceJobQueueSize",
    }
).encode()
"""TorchServe 0.12.0's answer while a model's worker starts (or cannot start), as it sent it here."""


@dataclass
class Context:
    """What the handler uses of TorchServe's ``ts.context.Context``."""

    model_file: Path
    statuses: dict[int, tuple[int, str]] = field(default_factory=dict)
    content_types: dict[int, str] = field(default_factory=dict)

    @property
    def system_properties(self) -> dict[str, Any]:
        return {"model_dir": str(self.model_file.parent), "gpu_id": None, "batch_size": 1}

    @property
    def manifest(self) -> dict[str, Any]:
        return {"model": {"modelName": MODEL, "serializedFile": self.model_file.name, "handler": HANDLER.name}}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value


@pytest.fixture(scope="module")
def det_file() -> Path:
    return model_path(load_card("pp-ocrv4-det"))


@pytest.fixture(scope="module")
def reference(det_file: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(det_file), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def handler(det_file: Path) -> ModuleType:
    """The handler file as TorchServe loads it (a module from a path), loaded with the det model."""
    spec = importlib.util.spec_from_file_location("tensor_handler", HANDLER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.handle(None, Context(det_file)) is None  # TorchServe's call at load time
    return module


def npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # what any client would write
    return buffer.getvalue()


def image(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 3, 64, 96), dtype=np.float32)


# --- the handler on its own -------------------------------------------------------------------------


def test_handler_runs_each_request(handler: ModuleType, det_file: Path, reference: ort.InferenceSession) -> None:
    context = Context(det_file)
    first, second = image(1, seed=1), image(2, seed=2)
    answers = handler.handle([{"body": bytearray(npz(x=first))}, {"data": npz(x=second)}], context)
    assert len(answers) == 2
    for idx, (answer, x) in enumerate(zip(answers, [first, second], strict=True)):
        outputs = dict(np.load(io.BytesIO(answer)))
        assert sorted(outputs) == [OUTPUT]
        np.testing.assert_array_equal(outputs[OUTPUT], reference.run([OUTPUT], {INPUT: x})[0])
        assert context.content_types[idx] == "application/octet-stream"
    assert context.statuses == {}


def test_an_empty_body_is_the_readiness_probe(handler: ModuleType, det_file: Path) -> None:
    context = Context(det_file)
    (answer,) = handler.handle([{"body": bytearray()}], context)
    assert dict(np.load(io.BytesIO(answer))) == {}
    assert context.statuses == {}


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"body": npz(x=image(1).astype(np.float64))}, "input 'x' is float32, the request has float64"),
        ({"body": npz(x=image(1)[0])}, "input 'x' has shape"),
        ({"body": npz(y=image(1))}, "inputs are ['x'], the request has ['y']"),
        ({"body": npz(x=image(1), y=image(1))}, "inputs are ['x'], the request has ['x', 'y']"),
        ({"body": b"hello"}, "not an .npz"),
        ({"body": b"PK\x03\x04broken"}, "not an .npz"),
        ({"body": "text"}, "got a str body"),
        ({}, "got no body"),
    ],
)
def test_a_bad_request_is_a_400_with_a_message(
    handler: ModuleType, det_file: Path, request_: dict[str, Any], message: str
) -> None:
    context = Context(det_file)
    (answer,) = handler.handle([request_], context)
    assert context.statuses == {0: (400, "BadInput")}
    assert context.content_types == {0: "application/json"}
    body = json.loads(answer)
    assert body["code"] == 400 and body["type"] == "BadInput"
    assert message in body["message"]


def test_a_failed_run_is_a_500_for_that_request_only(
    handler: ModuleType, det_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run = handler.run

    def run(session: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if feeds[INPUT].shape[0] == 2:
            raise RuntimeError("out of luck")
        result: dict[str, np.ndarray] = real_run(session, feeds)
        return result

    monkeypatch.setattr(handler, "run", run)
    context = Context(det_file)
    good, bad = handler.handle([{"body": npz(x=image(1))}, {"body": npz(x=image(2))}], context)
    assert context.statuses == {1: (500, "RunFailed")}
    assert json.loads(bad)["message"] == "RuntimeError: out of luck"
    assert OUTPUT in np.load(io.BytesIO(good)).files


def test_npz_takes_any_tensor_name(handler: ModuleType) -> None:
    """``numpy.savez(file, **arrays)`` cannot write an array called ``file``; both sides can."""
    arrays = {"file": np.arange(3), "allow_pickle": np.ones((2, 2), np.float16), "a/b:0": np.zeros(1, bool)}
    for written in (write_npz(arrays), handler.write_npz(arrays)):
        back = read_npz(written)
        assert sorted(back) == sorted(arrays)
        for name, array in arrays.items():
            assert back[name].dtype == array.dtype
            np.testing.assert_array_equal(back[name], array)


# --- TorchServeRest against a stand-in for TorchServe's frontend --------------------------------------


@dataclass
class FakeTorchServe:
    """``/ping`` and ``/predictions/{model}[/{version}]``, the latter through the real handler."""

    handler: ModuleType
    det_file: Path
    ping: tuple[int, dict[str, str]] = (200, {"status": "Healthy"})
    override: tuple[int, bytes] | None = None
    """Answer every prediction with this instead (a proxy's 503, another handler's JSON)."""
    paths: list[str] = field(default_factory=list)

    async def handle_ping(self, request: web.Request) -> web.Response:
        status, body = self.ping
        return web.json_response(body, status=status)

    async def handle_predictions(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        if self.override is not None:
            return web.Response(status=self.override[0], body=self.override[1])
        model = request.match_info["model"]
        if model != MODEL:
            # TorchServe's own answer for a model it does not have.
            body = {"code": 404, "type": "ModelNotFoundException", "message": f"Model not found: {model}"}
            return web.json_response(body, status=404)
        context = Context(self.det_file)
        (answer,) = self.handler.handle([{"body": bytearray(await request.read())}], context)
        status = context.statuses.get(0, (200, ""))[0]
        return web.Response(status=status, body=answer, content_type=context.content_types[0])


@pytest.fixture()
async def fake(handler: ModuleType, det_file: Path) -> AsyncIterator[tuple[FakeTorchServe, str]]:
    state = FakeTorchServe(handler, det_file)
    app = web.Application()
    app.router.add_get("/ping", state.handle_ping)
    app.router.add_post("/predictions/{model}", state.handle_predictions)
    app.router.add_post("/predictions/{model}/{version}", state.handle_predictions)
    async with TestServer(app, host="127.0.0.1") as server:
        yield state, f"http://127.0.0.1:{server.port}"


async def opened(url: str, model: str = MODEL, **options: Any) -> TorchServeRest:
    transport = TorchServeRest(ServerOptions(url=url, model=model, **options))
    await transport.open()
    return transport


async def test_ready_model_and_infer_equals_onnxruntime(
    fake: tuple[FakeTorchServe, str], reference: ort.InferenceSession
) -> None:
    _, url = fake
    transport = await opened(url)
    try:
        await transport.wait_ready()
        assert await transport.describe() == ServerModel()
        x = image(2)
        result = await transport.infer({INPUT: x}, [OUTPUT])
    finally:
        await transport.close()
    np.testing.assert_array_equal(result[OUTPUT], reference.run([OUTPUT], {INPUT: x})[0])
    assert transport.protocol == "TorchServe"
    # The readiness probe and the batch: both POSTs, both counted.
    assert transport.counts.requests == 2
    assert transport.counts.sent == len(write_npz({INPUT: x}))
    assert transport.counts.received > result[OUTPUT].nbytes


async def test_version_goes_in_the_path(fake: tuple[FakeTorchServe, str]) -> None:
    state, url = fake
    transport = await opened(url, version="2")
    try:
        await transport.infer({INPUT: image(1)}, [OUTPUT])
    finally:
        await transport.close()
    assert state.paths == [f"/predictions/{MODEL}/2"]


async def test_unknown_model_is_rejected(fake: tuple[FakeTorchServe, str]) -> None:
    _, url = fake
    transport = await opened(url, model="nope")
    try:
        with pytest.raises(Rejected, match="no model 'nope' on the server: Model not found: nope"):
            await transport.wait_ready()
    finally:
        await transport.close()


@pytest.mark.parametrize("ping", [(500, {"status": "Unhealthy"}), (200, {"status": "Partial Healthy"})])
async def test_unhealthy_server_is_unavailable(fake: tuple[FakeTorchServe, str], ping: tuple[int, Any]) -> None:
    state, url = fake
    state.ping = ping
    transport = await opened(url)
    try:
        with pytest.raises(Unavailable, match=ping[1]["status"]):
            await transport.wait_ready()
    finally:
        await transport.close()


async def test_no_worker_yet_is_unavailable(fake: tuple[FakeTorchServe, str]) -> None:
    state, url = fake
    state.override = (503, NO_WORKER)
    transport = await opened(url)
    try:
        with pytest.raises(Unavailable, match='HTTP 503: Model "det" has no worker'):
            await transport.wait_ready()
    finally:
        await transport.close()


async def test_bad_input_is_rejected_with_the_handlers_message(fake: tuple[FakeTorchServe, str]) -> None:
    _, url = fake
    transport = await opened(url)
    try:
        with pytest.raises(Rejected, match=r"HTTP 400: input 'x' is float32, the request has uint8"):
            await transport.infer({INPUT: np.zeros((1, 3, 32, 32), np.uint8)}, [OUTPUT])
    finally:
        await transport.close()


async def test_too_big_a_request_names_the_setting(fake: tuple[FakeTorchServe, str]) -> None:
    state, url = fake
    state.override = (413, b"")  # TorchServe 0.12.0's answer to 4x3x640x640 float32 by default
    transport = await opened(url)
    try:
        with pytest.raises(Rejected, match=r"HTTP 413: the request's \d+ bytes are over TorchServe's max_request_size"):
            await transport.infer({INPUT: image(1)}, [OUTPUT])
    finally:
        await transport.close()


async def test_another_handlers_answer_is_a_bad_answer(fake: tuple[FakeTorchServe, str]) -> None:
    state, url = fake
    state.override = (200, b'{"result": [0.5]}')
    transport = await opened(url)
    try:
        with pytest.raises(BadAnswer, match=r"expected an .npz.*result"):
            await transport.infer({INPUT: image(1)}, [OUTPUT])
    finally:
        await transport.close()


async def test_only_the_asked_outputs_come_back(fake: tuple[FakeTorchServe, str]) -> None:
    state, url = fake
    state.override = (200, write_npz({OUTPUT: np.zeros(1, np.float32), "other": np.ones(1)}))
    transport = await opened(url)
    try:
        assert sorted(await transport.infer({INPUT: image(1)}, [OUTPUT])) == [OUTPUT]
        assert await transport.infer({INPUT: image(1)}, ["missing"]) == {}  # the engine names it
    finally:
        await transport.close()


async def test_connection_refused_is_unavailable() -> None:
    transport = await opened(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(Unavailable):
            await transport.wait_ready()
        with pytest.raises(Unavailable):
            await transport.infer({INPUT: image(1)}, [OUTPUT])
    finally:
        await transport.close()
