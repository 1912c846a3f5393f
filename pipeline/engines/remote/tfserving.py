"""TensorFlow Serving's REST API: model status, the ``serving_default`` signature, predict.

URLs are ``{url}/v1/models/{model}[/versions/{version}]`` and that plus ``/metadata`` or
``:predict``. Tensors travel as JSON lists in the columnar form (``{"inputs": {name: list}}``, its
answer ``{"outputs": ...}``): every input by name in one object, whatever their batch sizes.

The same URLs and bodies are KServe's v1 protocol, whose servers (the KServe ModelServer) answer
the status URL with ``{"name": ..., "ready": true}`` and have no metadata route: for those
``describe`` lists no tensors, so the model card is not checked against the server.

JSON has one number type, so an answer's element type comes from the metadata: each output is
converted to the dtype that the signature lists. Where the server has no metadata, JSON numbers
with a fraction or exponent become float32 and whole numbers int64 (the commonest model types):
a model whose outputs are another type then fails the engine's dtype check, naming the output.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import numpy as np

from .dtypes import TF_TO_NUMPY
from .http import HttpSession, dumps_json, trimmed
from .options import ServerOptions
from .transport import BadAnswer, Rejected, ServerModel, ServerTensor, Transport, Unavailable

log = logging.getLogger("streamgraph.engine.remote")

SIGNATURE = "serving_default"
"""The signature ``predict`` runs when the request names none: the one whose tensors we list."""

AVAILABLE = "AVAILABLE"
"""The state of a model version that serves (``ModelVersionStatus.State``)."""


class TfServingRest(Transport):
    def __init__(self, server: ServerOptions) -> None:
        super().__init__(server)
        self._http = HttpSession(server, self.counts)
        version = f"/versions/{quote(server.version, safe='')}" if server.version else ""
        self._model_path = f"/v1/models/{quote(server.model, safe='')}{version}"
        self._dtypes: dict[str, str] = {}
        """numpy dtype of each output, from the metadata (empty where the server has none)."""

    @property
    def protocol(self) -> str:
        return "TF Serving REST"

    async def open(self) -> None:
        await self._http.open()

    async def close(self) -> None:
        await self._http.close()

    async def wait_ready(self) -> None:
        answer = await self._http.get(self._model_path, allow=(404,))
        if answer.status == 404:
            raise Rejected(f"no model {self.server.model!r} on the server: {answer.message()}")
        problem = status_problem(answer.json())
        if problem:
            raise Unavailable(problem)

    async def describe(self) -> ServerModel:
        answer = await self._http.get(f"{self._model_path}/metadata", allow=(404,))
        try:
            data = None if answer.status == 404 else answer.json()
        except BadAnswer:
            data = None
        if data is None:
            log.info(
                "%s has no TF Serving metadata (HTTP %d): its tensors are not checked against the model card",
                self.server.where(),
                answer.status,
            )
            return ServerModel()
        model = signature_model(data)
        if model is None:
            log.info(
                "%s: a tensor of signature %r has no known rank: its tensors are not checked against the model card",
                self.server.where(),
                SIGNATURE,
            )
            return ServerModel()
        self._dtypes = {tensor.name: tensor.dtype for tensor in model.outputs if tensor.dtype}
        return model

    async def infer(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        body = dumps_json({"inputs": {name: array.tolist() for name, array in feeds.items()}})
        answer = await self._http.post(f"{self._model_path}:predict", body, content_type="application/json")
        data = answer.json()
        if isinstance(data, dict) and "outputs" not in data and isinstance(data.get("error"), str):
            raise Rejected(f"predict: {trimmed(data['error'])}")
        return {name: self._array(name, value) for name, value in named_outputs(data, outputs).items()}

    def _array(self, name: str, value: Any) -> np.ndarray:
        try:
            dtype = self._dtypes.get(name)
            if dtype is not None:
                return np.asarray(value, dtype=dtype)
            return default_array(value)
        except (ValueError, TypeError):
            raise BadAnswer(f"output {name!r} is not a tensor of numbers: {trimmed(repr(value))}") from None


def status_problem(data: Any) -> str | None:
    """Why the model does not serve yet, from the status URL's answer; None when it does. TF
    Serving lists each version's state; a KServe v1 server says ``ready``."""
    if not isinstance(data, dict):
        raise BadAnswer(f"model status is not a JSON object: {trimmed(repr(data))}")
    if isinstance(data.get("ready"), bool):
        return None if data["ready"] else "model not ready yet"
    versions = data.get("model_version_status")
    if not isinstance(versions, list):
        raise BadAnswer(f"model status without model_version_status: {trimmed(repr(data))}")
    states = [f"{v.get('version')} {v.get('state')}" for v in versions if isinstance(v, dict)]
    if any(v.get("state") == AVAILABLE for v in versions if isinstance(v, dict)):
        return None
    return f"no version available yet ({', '.join(states) or 'none loaded'})"


def signature_model(data: Any) -> ServerModel | None:
    """The ``serving_default`` signature of a metadata answer as a ``ServerModel``; None when a
    tensor's rank is unknown (a ``ServerTensor`` cannot say "any rank")."""
    try:
        signatures = data["metadata"]["signature_def"]["signature_def"]
    except (KeyError, TypeError):
        raise BadAnswer(f"model metadata without signature_def: {trimmed(repr(data))}") from None
    signature = signatures.get(SIGNATURE) if isinstance(signatures, dict) else None
    if not isinstance(signature, dict):
        names = sorted(signatures) if isinstance(signatures, dict) else []
        raise Rejected(f"the model has no signature {SIGNATURE!r} (it has {names})")
    inputs = [server_tensor(key, info) for key, info in (signature.get("inputs") or {}).items()]
    outputs = [server_tensor(key, info) for key, info in (signature.get("outputs") or {}).items()]
    if any(tensor is None for tensor in [*inputs, *outputs]):
        return None
    return ServerModel(
        inputs=[t for t in inputs if t is not None],
        outputs=[t for t in outputs if t is not None],
    )


def server_tensor(key: str, info: Any) -> ServerTensor | None:
    """One ``TensorInfo`` of a signature, named by its key in the signature (what predict takes
    and answers with), not the graph's ``x:0``. Its dims' sizes are strings (``"-1"``) in JSON,
    as protobuf writes 64-bit integers. None when its rank is unknown."""
    if not isinstance(info, dict):
        raise BadAnswer(f"tensor {key!r} of signature {SIGNATURE!r} is {trimmed(repr(info))}")
    shape = info.get("tensor_shape") or {}
    if shape.get("unknown_rank"):
        return None
    datatype = str(info.get("dtype", "DT_INVALID"))
    try:
        dims = [int(dim.get("size", 0)) for dim in shape.get("dim") or []]
    except (ValueError, TypeError, AttributeError):
        raise BadAnswer(f"tensor {key!r} has shape {trimmed(repr(shape))}") from None
    return ServerTensor(name=key, datatype=datatype, dtype=TF_TO_NUMPY.get(datatype), shape=dims)


def named_outputs(data: Any, outputs: list[str]) -> dict[str, Any]:
    """The asked-for outputs of a columnar answer by name. A model with one output answers with
    the tensor itself (``{"outputs": [[...]]}``), others with an object of tensors by name."""
    if not isinstance(data, dict) or "outputs" not in data:
        raise BadAnswer(f"predict answered without 'outputs': {trimmed(repr(data))}")
    answer = data["outputs"]
    if isinstance(answer, dict):
        return {name: answer[name] for name in outputs if name in answer}
    if len(outputs) != 1:
        raise BadAnswer(f"predict answered one unnamed tensor, {len(outputs)} outputs were asked for {outputs}")
    return {outputs[0]: answer}


def default_array(value: Any) -> np.ndarray:
    """A tensor of JSON numbers whose type the server did not tell: float32 where any has a
    fraction or exponent, else int64 (or bool)."""
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    if array.dtype.kind in "iu":
        return array.astype(np.int64, copy=False)
    return array
