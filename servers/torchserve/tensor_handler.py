"""A TorchServe handler that runs an ONNX model on ONNX Runtime: tensors in, tensors out, as .npz.

Archive it with the model (README.md has the commands)::

    torch-model-archiver --model-name det --version 1 --handler tensor_handler.py \\
        --serialized-file model.onnx --export-path model_store

The wire format (what streamgraph's ``torchserve`` engine sends and reads):

* request: ``POST /predictions/{model}``, body an uncompressed ``.npz`` (``numpy.savez``) with one
  array per model input, named as the input; ``Content-Type: application/octet-stream``;
* answer: 200, an ``.npz`` with every model output by name, ``application/octet-stream``;
* an empty body is a readiness probe: 200 and an ``.npz`` with no arrays;
* a body that is not such an ``.npz`` (a missing or unknown input, a wrong dtype or rank): 400,
  ``{"code": 400, "type": "BadInput", "message": ...}``; a failed run: 500, ``"type": "RunFailed"``
  (TorchServe's own answer to a handler that raises is 503, which a client would retry).

Each request is one run (its arrays carry the batch already), so TorchServe's ``batch_size``
should stay 1. The module needs numpy and onnxruntime, not torch; ``handle`` is the module-level
entry point TorchServe calls, first with ``data=None`` to load the model.
"""

from __future__ import annotations

import io
import json
import logging
import os
import zipfile
from typing import Any

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

# ONNX Runtime's type strings -> numpy, to check a request's arrays before the run.
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}

_session: ort.InferenceSession | None = None
"""One per worker process: TorchServe starts a process per worker and loads the handler in each."""


class BadInput(ValueError):
    """The request's body is not the .npz of the model's inputs: the client's fault (400)."""


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[bytes] | None:
    """TorchServe's entry point: one answer per request in ``data``, in its order."""
    global _session
    if _session is None:
        _session = load_session(context)
    if data is None:  # the call at load time
        return None
    return [answer(_session, request, idx, context) for idx, request in enumerate(data)]


def load_session(context: Any) -> ort.InferenceSession:
    """The archive's ``--serialized-file`` on ONNX Runtime: on the worker's GPU where TorchServe
    gives it one and ONNX Runtime has CUDA, else on the CPU."""
    properties = context.system_properties
    path = os.path.join(properties["model_dir"], context.manifest["model"]["serializedFile"])
    providers: list[Any] = ["CPUExecutionProvider"]
    gpu_id = properties.get("gpu_id")
    if gpu_id is not None and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(gpu_id)}))
    session = ort.InferenceSession(path, providers=providers)
    log.info("loaded %s on %s", path, session.get_providers()[0])
    return session


def answer(session: ort.InferenceSession, request: dict[str, Any], idx: int, context: Any) -> bytes:
    """One request's answer; an error sets that request's status and answers TorchServe's JSON."""
    try:
        feeds = read_inputs(session, request_body(request))
        outputs = run(session, feeds)
    except BadInput as exc:
        return failed(context, idx, 400, "BadInput", str(exc))
    except Exception as exc:  # a failed run is this model's answer, not the server's health
        log.exception("run failed")
        return failed(context, idx, 500, "RunFailed", f"{type(exc).__name__}: {exc}")
    context.set_response_content_type(idx, "application/octet-stream")
    return write_npz(outputs)


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output by name; none for no inputs (the readiness probe)."""
    if not feeds:
        return {}
    names = [node.name for node in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def request_body(request: dict[str, Any]) -> bytes:
    """The raw body: TorchServe passes it as ``body`` (or ``data``), bytes or bytearray, for an
    octet-stream (or JSON) request; a ``str`` for text, and nothing for a form."""
    body = request.get("body", request.get("data"))
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    got = "no body (a form?)" if body is None else f"a {type(body).__name__} body"
    raise BadInput(f"expected an .npz body (Content-Type: application/octet-stream), got {got}")


def read_inputs(session: ort.InferenceSession, body: bytes) -> dict[str, np.ndarray]:
    """The request's arrays, checked against the model's inputs; empty for an empty body."""
    if not body:
        return {}
    if not body.startswith(b"PK"):  # np.load would take other bytes for a pickle, and say so
        raise BadInput(f"the body is not an .npz (a zip of .npy files): it starts {body[:16]!r}")
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as exc:
        raise BadInput(f"the body is not an .npz: {exc}") from None
    inputs = {node.name: node for node in session.get_inputs()}
    if sorted(arrays) != sorted(inputs):
        raise BadInput(f"inputs are {sorted(inputs)}, the request has {sorted(arrays)}")
    for name, node in inputs.items():
        array = arrays[name]
        dtype = _ORT_TYPES.get(node.type)
        if dtype is not None and array.dtype != np.dtype(dtype):
            raise BadInput(f"input {name!r} is {dtype}, the request has {array.dtype}")
        fits = array.ndim == len(node.shape) and all(
            not isinstance(dim, int) or dim == size for dim, size in zip(node.shape, array.shape, strict=True)
        )
        if not fits:
            raise BadInput(f"input {name!r} has shape {node.shape}, the request has {list(array.shape)}")
    return arrays


def write_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """What ``numpy.savez`` writes (a stored zip of ``name.npy``), for any names: ``savez`` takes
    them as keyword arguments, so an output called ``file`` would collide with its own."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def failed(context: Any, idx: int, code: int, kind: str, message: str) -> bytes:
    context.set_response_status(code, kind, idx)
    context.set_response_content_type(idx, "application/json")
    return json.dumps({"code": code, "type": kind, "message": message}).encode()
