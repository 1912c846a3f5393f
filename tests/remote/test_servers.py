"""The fixtures give real, correct servers: Triton and KServe answer the KServe v2 protocol (and
KServe TF Serving's v1 format) with what ONNX Runtime computes here, and a killed server comes
back on the same port. Plain HTTP (urllib) and the bare gRPC stubs: what any client sees on the wire."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import grpc
import numpy as np
import pytest

from pipeline.engines.remote.proto import grpc_service_pb2 as pb
from pipeline.engines.remote.proto import grpc_service_pb2_grpc as pb_grpc
from tests.remote.servers import ReferenceModel, ServerProcess


def call(url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[dict[str, str], bytes]:
    """GET (no body) or POST; the response headers (lower-case names) and body; HTTP errors raise."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return {k.lower(): v for k, v in response.headers.items()}, response.read()


def call_json(url: str, body: Any = None) -> Any:
    return json.loads(call(url, body)[1])


def v2_json_infer(server: ServerProcess, x: np.ndarray, input_name: str) -> dict[str, np.ndarray]:
    body = {"inputs": [{"name": input_name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    reply = call_json(f"{server.http_url}/v2/models/{server.model}/infer", body)
    return {o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"]) for o in reply["outputs"]}


def v2_binary_infer(server: ServerProcess, x: np.ndarray, input_name: str) -> dict[str, np.ndarray]:
    """The binary tensor data extension both ways: a JSON header, then the raw tensors."""
    header = {
        "inputs": [
            {
                "name": input_name,
                "datatype": "FP32",
                "shape": list(x.shape),
                "parameters": {"binary_data_size": x.nbytes},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    head = json.dumps(header).encode()
    headers, body = call(
        f"{server.http_url}/v2/models/{server.model}/infer",
        head + x.tobytes(),
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))},
    )
    json_size = int(headers["inference-header-content-length"])
    reply, offset, outputs = json.loads(body[:json_size]), json_size, {}
    for output in reply["outputs"]:
        size = output["parameters"]["binary_data_size"]
        outputs[output["name"]] = np.frombuffer(body[offset : offset + size], np.float32).reshape(output["shape"])
        offset += size
    assert offset == len(body)
    return outputs


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return np.random.default_rng(7).random((1, 3, 64, 64), dtype=np.float32)


@pytest.fixture(scope="module")
def expected(det_model: ReferenceModel, frame: np.ndarray) -> np.ndarray:
    (out,) = det_model.run(frame)
    assert out.shape == (1, 1, 64, 64)
    return out


# --- Triton --------------------------------------------------------------------------------------


def test_triton_metadata_shows_the_onnx_tensors_with_a_dynamic_batch_axis(triton_server: ServerProcess) -> None:
    meta = call_json(f"{triton_server.http_url}/v2/models/pp_ocrv4_det")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3, -1, -1]}]
    assert meta["outputs"] == [{"name": "sigmoid_0.tmp_0", "datatype": "FP32", "shape": [-1, 1, -1, -1]}]
    call(f"{triton_server.http_url}/v2/models/pp_ocrv4_det/ready")  # 200 (an error raises); Triton sends no body
    assert triton_server.grpc_url.startswith("grpc://127.0.0.1:")


@pytest.mark.parametrize("infer", [v2_json_infer, v2_binary_infer], ids=["json", "binary"])
def test_triton_infers_what_onnxruntime_computes(
    triton_server: ServerProcess, det_model: ReferenceModel, frame: np.ndarray, expected: np.ndarray, infer: Any
) -> None:
    outputs = infer(triton_server, frame, det_model.input)
    assert list(outputs) == [det_model.output]
    assert outputs[det_model.output].shape == expected.shape
    assert np.allclose(outputs[det_model.output], expected, atol=1e-5)


def test_triton_killed_comes_back_on_the_same_port(
    triton_server: ServerProcess, det_model: ReferenceModel, frame: np.ndarray, expected: np.ndarray
) -> None:
    url = triton_server.http_url
    triton_server.kill()
    assert not triton_server.running
    with pytest.raises(urllib.error.URLError):
        call(f"{url}/v2/health/live")
    triton_server.restart()
    assert triton_server.http_url == url
    outputs = v2_json_infer(triton_server, frame, det_model.input)
    assert np.allclose(outputs[det_model.output], expected, atol=1e-5)


# --- KServe --------------------------------------------------------------------------------------


def test_kserve_v2_metadata_and_readiness(kserve_server: ServerProcess) -> None:
    meta = call_json(f"{kserve_server.http_url}/v2/models/pp_ocrv4_det")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3, -1, -1]}]
    assert meta["outputs"] == [{"name": "sigmoid_0.tmp_0", "datatype": "FP32", "shape": [-1, 1, -1, -1]}]
    assert call_json(f"{kserve_server.http_url}/v2/models/pp_ocrv4_det/ready")["ready"] is True


@pytest.mark.parametrize("infer", [v2_json_infer, v2_binary_infer], ids=["json", "binary"])
def test_kserve_v2_infers_what_onnxruntime_computes(
    kserve_server: ServerProcess, det_model: ReferenceModel, frame: np.ndarray, expected: np.ndarray, infer: Any
) -> None:
    outputs = infer(kserve_server, frame, det_model.input)
    assert list(outputs) == [det_model.output]
    assert np.allclose(outputs[det_model.output], expected, atol=1e-5)


@pytest.mark.parametrize("named", [True, False], ids=["named-inputs", "one-input-shortcut"])
def test_kserve_v1_predict_speaks_tf_serving_columnar(
    kserve_server: ServerProcess, det_model: ReferenceModel, frame: np.ndarray, expected: np.ndarray, named: bool
) -> None:
    inputs = {det_model.input: frame.tolist()} if named else frame.tolist()
    reply = call_json(f"{kserve_server.http_url}/v1/models/pp_ocrv4_det:predict", {"inputs": inputs})
    # One output: TF Serving answers the value itself, not {name: value}.
    assert isinstance(reply["outputs"], list)
    assert np.allclose(np.asarray(reply["outputs"], dtype=np.float32), expected, atol=1e-5)


def test_kserve_v1_predict_speaks_tf_serving_rows(
    kserve_server: ServerProcess, frame: np.ndarray, expected: np.ndarray
) -> None:
    reply = call_json(f"{kserve_server.http_url}/v1/models/pp_ocrv4_det:predict", {"instances": frame.tolist()})
    assert np.allclose(np.asarray(reply["predictions"], dtype=np.float32), expected, atol=1e-5)


def test_kserve_rejects_a_wrong_dtype_with_400(kserve_server: ServerProcess) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3, 1, 1], "data": [0.5, 0.5, 0.5]}]}
    with pytest.raises(urllib.error.HTTPError) as caught:
        call(f"{kserve_server.http_url}/v2/models/pp_ocrv4_det/infer", body)
    assert caught.value.code == 400
    assert "FP32" in json.loads(caught.value.read())["error"]


# --- gRPC (KServe v2's GRPCInferenceService, the stubs vendored for the remote engines) -------------


@pytest.mark.parametrize("raw", [True, False], ids=["raw-contents", "typed-contents"])
@pytest.mark.parametrize("kind", ["triton_server", "kserve_server"])
def test_grpc_infers_what_onnxruntime_computes(
    request: pytest.FixtureRequest, kind: str, raw: bool, det_model: ReferenceModel, frame: np.ndarray
) -> None:
    server: ServerProcess = request.getfixturevalue(kind)
    x = np.concatenate([frame, frame[:, :, ::-1]])  # a batch of two
    (expected,) = det_model.run(x)
    query = pb.ModelInferRequest(model_name=server.model)
    tensor = query.inputs.add(name=det_model.input, datatype="FP32", shape=list(x.shape))
    if raw:
        query.raw_input_contents.append(x.tobytes())
    else:
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
    query.outputs.add(name=det_model.output)
    with grpc.insecure_channel(server.grpc_url.removeprefix("grpc://")) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
        reply = stub.ModelInfer(query, timeout=30)
    (output,) = reply.outputs
    assert (output.name, output.datatype, list(output.shape)) == (det_model.output, "FP32", list(expected.shape))
    # Both servers answer in raw_output_contents, whichever way the request came.
    got = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(expected.shape)
    assert np.allclose(got, expected, atol=1e-5)
