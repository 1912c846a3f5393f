"""KServe v2 over gRPC (``KServeGrpc``) against a real Triton, and KServe's ModelServer where the
``kserve_server`` fixture is there; the answer decoding on its own with made-up answers."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from pipeline.engines import RemoteEngine, engine_entry
from pipeline.engines.base import RunSettings
from pipeline.engines.registry import check_engine, load_engine
from pipeline.engines.remote.kserve_grpc import KServeGrpc, _outputs, _sorted
from pipeline.engines.remote.options import ServerOptions
from pipeline.engines.remote.proto import grpc_service_pb2 as pb
from pipeline.engines.remote.transport import BadAnswer, Rejected, ServerTensor, Unavailable
from pipeline.modelcard import load_card
from pipeline.modelstore import model_path
from tests.remote.servers import free_port

INPUT, OUTPUT = "x", "sigmoid_0.tmp_0"


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    """The det model in this process: what the server's answers are compared with."""
    return ort.InferenceSession(str(model_path(load_card("pp-ocrv4-det"))), providers=["CPUExecutionProvider"])


async def opened(url: str, model: str, *, read_config: bool = True, **options: Any) -> KServeGrpc:
    transport = KServeGrpc(ServerOptions(url=url, model=model, **options), read_config=read_config)
    await transport.open()
    return transport


@pytest.fixture()
async def triton(triton_server: Any) -> AsyncIterator[KServeGrpc]:
    transport = await opened(triton_server.grpc_url, triton_server.model)
    yield transport
    await transport.close()


def triton_config(triton_server: Any) -> dict[str, Any]:
    """The model's configuration through Triton's HTTP API: what gRPC's ModelConfig should agree with."""
    with urllib.request.urlopen(f"{triton_server.http_url}/v2/models/{triton_server.model}/config", timeout=10) as r:
        config: dict[str, Any] = json.loads(r.read())
    return config


async def test_describe_gives_the_models_tensors_and_the_batch_limit_from_tritons_config(
    triton: KServeGrpc, triton_server: Any
) -> None:
    await triton.wait_ready()
    model = await triton.describe()
    assert model.inputs == [ServerTensor(INPUT, "FP32", "float32", [-1, 3, -1, -1])]
    assert model.outputs == [ServerTensor(OUTPUT, "FP32", "float32", [-1, 1, -1, -1])]
    max_batch = triton_config(triton_server)["max_batch_size"]
    assert max_batch > 0 and model.max_batch == max_batch
    assert triton.protocol == "KServe v2 gRPC"


async def test_without_read_config_the_batch_limit_stays_unknown(triton_server: Any) -> None:
    transport = await opened(triton_server.grpc_url, triton_server.model, read_config=False)
    try:
        assert (await transport.describe()).max_batch is None
    finally:
        await transport.close()


async def test_infer_answers_what_onnxruntime_computes_in_process_and_counts_the_bytes(
    triton: KServeGrpc, session: ort.InferenceSession
) -> None:
    await triton.wait_ready()
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    answer = await triton.infer({INPUT: x}, [OUTPUT])
    assert list(answer) == [OUTPUT]
    (expected,) = session.run(None, {INPUT: x})
    assert answer[OUTPUT].dtype == np.float32 and answer[OUTPUT].shape == (2, 1, 64, 64)
    np.testing.assert_allclose(answer[OUTPUT], expected, atol=1e-4)
    # The message bodies: the raw tensors plus a header of names, shapes and datatypes.
    counts = triton.counts
    assert counts.requests == 1
    assert x.nbytes < counts.sent < x.nbytes + 1000
    assert expected.nbytes < counts.received < expected.nbytes + 1000

    # A non-contiguous input goes as its values, not as its memory.
    strided = np.asfortranarray(x[:1])
    (expected,) = session.run(None, {INPUT: strided})
    np.testing.assert_allclose((await triton.infer({INPUT: strided}, [OUTPUT]))[OUTPUT], expected, atol=1e-4)
    assert counts.requests == 2


async def test_the_server_refusing_a_request_is_rejected_with_the_grpc_code(triton: KServeGrpc) -> None:
    x = np.zeros((1, 3, 32, 32), np.float64)  # the model takes FP32
    with pytest.raises(Rejected, match=r"ModelInfer: gRPC INVALID_ARGUMENT: .*FP64"):
        await triton.infer({INPUT: x}, [OUTPUT])


async def test_a_model_the_server_does_not_have_is_rejected(triton_server: Any) -> None:
    for options in ({"model": "no_such_model"}, {"model": triton_server.model, "version": "999"}):
        transport = await opened(triton_server.grpc_url, **options)
        try:
            with pytest.raises(Rejected, match="no such model"):
                await transport.wait_ready()
        finally:
            await transport.close()


async def test_a_closed_port_is_unavailable() -> None:
    transport = await opened(f"grpc://127.0.0.1:{free_port()}", "pp_ocrv4_det", timeout_s=5)
    try:
        for _ in range(2):  # the second call finds the channel already failed: still Unavailable, at once
            with pytest.raises(Unavailable, match="ServerReady: gRPC UNAVAILABLE"):
                await transport.wait_ready()
        with pytest.raises(Unavailable, match="ModelInfer: gRPC UNAVAILABLE"):
            await transport.infer({INPUT: np.zeros((1, 3, 32, 32), np.float32)}, [OUTPUT])
        assert transport.counts.requests == 0  # only answered requests count
    finally:
        await transport.close()


async def test_a_killed_server_is_unavailable_and_the_same_channel_reaches_it_once_it_is_back(
    triton_server: Any,
) -> None:
    transport = await opened(triton_server.grpc_url, triton_server.model, timeout_s=5, max_backoff_s=1.0)
    x = np.zeros((1, 3, 32, 32), np.float32)
    try:
        await transport.wait_ready()
        await transport.infer({INPUT: x}, [OUTPUT])
        await asyncio.to_thread(triton_server.kill)
        with pytest.raises(Unavailable, match="gRPC UNAVAILABLE"):
            await transport.infer({INPUT: x}, [OUTPUT])
        await asyncio.to_thread(triton_server.restart)
        # The channel reconnects at the engine's pace (max_backoff_s), not gRPC's default of up to
        # two minutes, so the server is found again within a few seconds of its return.
        deadline = time.monotonic() + 15
        while True:
            try:
                await transport.wait_ready()
                break
            except Unavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        assert (await transport.infer({INPUT: x}, [OUTPUT]))[OUTPUT].shape == (1, 1, 32, 32)
    finally:
        await transport.close()


async def test_the_triton_engine_runs_the_card_over_grpc(triton_server: Any, session: ort.InferenceSession) -> None:
    card = load_card("pp-ocrv4-det")
    server = {"url": triton_server.grpc_url, "model": triton_server.model}
    options = engine_entry("triton").options.model_validate({"server": server})
    settings = RunSettings(max_batch=2)
    engine = load_engine("triton", card, options, settings)
    assert isinstance(engine, RemoteEngine)
    await engine.open()
    try:
        check_engine(engine, settings)
        assert "KServe v2 gRPC" in engine.description
        x = np.random.default_rng(1).random((2, 3, 96, 128), dtype=np.float32)
        (expected,) = session.run(None, {INPUT: x})
        np.testing.assert_allclose((await engine.infer_async({INPUT: x}))[OUTPUT], expected, atol=1e-4)
    finally:
        await engine.close()


async def test_kserve_modelserver_over_grpc(request: pytest.FixtureRequest, session: ort.InferenceSession) -> None:
    try:
        kserve_server = request.getfixturevalue("kserve_server")
    except pytest.FixtureLookupError:
        pytest.skip("no kserve_server fixture")
    url = getattr(kserve_server, "grpc_url", None)
    if not url:
        pytest.skip("the kserve_server fixture has no gRPC port")
    transport = await opened(url, kserve_server.model)
    try:
        await transport.wait_ready()
        model = await transport.describe()  # ModelServer has no ModelConfig (UNIMPLEMENTED): no limit
        assert model.inputs == [ServerTensor(INPUT, "FP32", "float32", [-1, 3, -1, -1])]
        assert model.outputs == [ServerTensor(OUTPUT, "FP32", "float32", [-1, 1, -1, -1])]
        assert model.max_batch is None
        x = np.random.default_rng(2).random((2, 3, 64, 64), dtype=np.float32)
        (expected,) = session.run(None, {INPUT: x})
        np.testing.assert_allclose((await transport.infer({INPUT: x}, [OUTPUT]))[OUTPUT], expected, atol=1e-4)
    finally:
        await transport.close()
    transport = await opened(url, "no_such_model")
    try:
        with pytest.raises(Rejected, match="no such model"):
            await transport.wait_ready()
    finally:
        await transport.close()


# --- answers decoded on their own (no server) -------------------------------------------------------


def answer(*outputs: tuple[str, str, list[int]], raw: list[bytes] | None = None) -> pb.ModelInferResponse:
    tensors = [pb.ModelInferResponse.InferOutputTensor(name=n, datatype=d, shape=s) for n, d, s in outputs]
    return pb.ModelInferResponse(outputs=tensors, raw_output_contents=raw or [])


def test_raw_outputs_become_arrays_of_their_datatype_and_shape() -> None:
    y = np.arange(6, dtype=np.int64).reshape(2, 3)
    z = np.array([1.5, 2.5], np.float16)
    arrays = _outputs(answer(("y", "INT64", [2, 3]), ("z", "FP16", [2]), raw=[y.tobytes(), z.tobytes()]))
    np.testing.assert_array_equal(arrays["y"], y)
    np.testing.assert_array_equal(arrays["z"], z)
    assert arrays["z"].dtype == np.float16


def test_typed_contents_are_read_where_a_server_sends_no_raw_bytes() -> None:
    # KServe's ModelServer answers this way for an output not set as binary.
    response = answer(("y", "FP32", [1, 2]), ("b", "BOOL", [2]))
    response.outputs[0].contents.fp32_contents.extend([0.25, 0.5])
    response.outputs[1].contents.bool_contents.extend([True, False])
    arrays = _outputs(response)
    np.testing.assert_array_equal(arrays["y"], np.array([[0.25, 0.5]], np.float32))
    assert arrays["y"].dtype == np.float32
    np.testing.assert_array_equal(arrays["b"], [True, False])


@pytest.mark.parametrize(
    ("response", "problem"),
    [
        (answer(("y", "FP32", [2, 3])), "came without data"),
        (answer(("y", "FP32", [2, 3]), raw=[b"\0" * 20]), "came with 20 bytes, expected 24"),
        (answer(("y", "FP32", [1]), ("z", "FP32", [1]), raw=[b"\0" * 4]), "2 outputs but 1 raw contents"),
        (answer(("y", "BYTES", [1]), raw=[b"\0\0\0\0"]), "BYTES, which this engine cannot read"),
        (answer(("y", "FP16", [2])), "came without data"),
    ],
)
def test_an_answer_that_does_not_add_up_is_a_bad_answer(response: pb.ModelInferResponse, problem: str) -> None:
    with pytest.raises(BadAnswer, match=problem):
        _outputs(response)


def test_the_request_is_the_message_protobuf_would_have_made() -> None:
    transport = KServeGrpc(ServerOptions(url="grpc://127.0.0.1:1", model="det", version="3"), read_config=False)
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    mask = np.array([[True, False, True]])
    body = transport._infer_request({INPUT: x, "mask": mask}, [OUTPUT, "other"])
    tensor = pb.ModelInferRequest.InferInputTensor
    wanted = pb.ModelInferRequest(
        model_name="det",
        model_version="3",
        inputs=[
            tensor(name=INPUT, datatype="FP32", shape=[1, 2, 3, 4]),
            tensor(name="mask", datatype="BOOL", shape=[1, 3]),
        ],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in (OUTPUT, "other")],
        raw_input_contents=[x.tobytes(), mask.tobytes()],
    )
    assert pb.ModelInferRequest.FromString(body) == wanted
    assert body == wanted.SerializeToString()
    with pytest.raises(Rejected, match="no KServe v2 datatype"):
        transport._infer_request({INPUT: np.array(["text"])}, [OUTPUT])


class Failed(Exception):
    """What a failed grpc.aio call raises (AioRpcError), as far as _sorted reads it."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "details", "kind", "message"),
    [
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", Unavailable, "ModelInfer: gRPC UNAVAILABLE: Socket closed"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", Unavailable, "no answer within 2.5 s"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", Unavailable, "RESOURCE_EXHAUSTED: queue full"),
        (grpc.StatusCode.ABORTED, "", Unavailable, "ABORTED: (no details)"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Sent message larger than max (300 vs. 200)", Rejected, "larger"),
        (grpc.StatusCode.INTERNAL, "boom\n  at line 3", Rejected, "INTERNAL: boom at line 3"),
        (grpc.StatusCode.UNIMPLEMENTED, "", Rejected, "UNIMPLEMENTED"),
    ],
)
def test_grpc_statuses_sort_into_retried_and_refused(
    code: grpc.StatusCode, details: str, kind: type[Exception], message: str
) -> None:
    error = _sorted("ModelInfer", Failed(code, details), 2.5)
    assert type(error) is kind or (kind is Rejected and isinstance(error, Rejected))
    assert message in str(error)
