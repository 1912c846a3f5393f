"""KServe v2 (the open inference protocol) over gRPC: Triton, KServe's ModelServer, other v2 servers.

One ``grpc.aio`` channel (one HTTP/2 connection) per transport carries every request: HTTP/2
multiplexes the engine's ``max_in_flight`` calls on it. The stubs in ``proto/`` are generated from
Triton's ``grpc_service.proto``, a superset of KServe's: same package, service and messages, plus
``ModelConfig``, which ``read_config`` asks for (Triton's ``max_batch_size``; a server without it
answers UNIMPLEMENTED and the batch limit stays unknown).

Tensors travel as raw bytes (``raw_input_contents`` / ``raw_output_contents``). The request is
serialized here rather than by protobuf: its small header (names, shapes, datatypes) through
protobuf, then each input appended as one more ``raw_input_contents`` field straight from the
array's memory. Protobuf's ``bytes`` fields take only ``bytes``, so the usual way copies each batch
twice (``tobytes`` and then serializing); this way it is copied once, into the request.

Failures are sorted by gRPC status: UNAVAILABLE (no connection, or the server going away),
DEADLINE_EXCEEDED (no answer within ``timeout_s``), RESOURCE_EXHAUSTED (but for a message over a
size limit) and ABORTED are ``Unavailable``, tried again by the engine; any other status is
``Rejected``, with its code name and the server's details.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

import grpc
import numpy as np

from .dtypes import V2_TO_NUMPY, v2_datatype
from .options import ServerOptions
from .proto import grpc_service_pb2 as pb
from .proto import grpc_service_pb2_grpc as pb_grpc
from .transport import BadAnswer, Rejected, ServerModel, ServerTensor, Transport, Unavailable

DEFAULT_PORT = 8001
"""Triton's gRPC port, for a ``grpc://host`` URL without one."""

MAX_MESSAGE_BYTES = 256 * 1024 * 1024
"""gRPC's default cap on a received message is 4 MiB: one batch of 8 frames of 640x640 float32 is
about 39 MiB. Raised both ways (the server has a limit of its own: Triton has none by default)."""

RETRIED_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
"""Statuses that say "not now" rather than "no": a server down, restarting, slow or overloaded."""

MODEL_MISSING_CODES = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT})
"""How servers say a model does not exist: KServe NOT_FOUND, Triton INVALID_ARGUMENT (unknown model)."""

MESSAGE_LIMIT = 300
"""Characters of a server's error details kept in ours (some send a whole stack trace)."""

_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_RAW_INPUT_TAG = bytes([(7 << 3) | 2])
"""``raw_input_contents`` is field 7 of ModelInferRequest, length-delimited (wire type 2)."""

# Where each datatype sits in InferTensorContents, for a server that answers with typed contents
# instead of raw bytes (KServe's ModelServer does when the model's output was not set as binary).
_TYPED_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


class KServeGrpc(Transport):
    def __init__(self, server: ServerOptions, *, read_config: bool) -> None:
        super().__init__(server)
        self._read_config = read_config
        """Ask for Triton's model configuration (``max_batch_size``), an extension of Triton's."""
        self._target = _target(server.url)
        self._version = server.version or ""
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None
        self._infer: Any = None
        # gRPC metadata keys are lower-case; a header's name is not case-sensitive in HTTP.
        self._metadata = tuple((name.lower(), value) for name, value in server.headers.items()) or None

    @property
    def protocol(self) -> str:
        return "KServe v2 gRPC"

    async def open(self) -> None:
        if self._channel is not None:
            return
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # Keep-alive pings only while a call is out (pings on an idle connection more often than
            # every 5 min make gRPC servers close it with "too_many_pings"): a call to a server that
            # vanished without closing the connection then fails within 20 s of the next ping
            # rather than at its deadline.
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 0),
            # After a failed connection the channel waits before connecting again, up to 120 s by
            # default, and fails every call at once meanwhile: that would outlast the engine's own
            # backoff. Reconnect at the engine's pace, so its probes find a server back up.
            ("grpc.initial_reconnect_backoff_ms", max(100, int(self.server.backoff_s * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(100, int(self.server.max_backoff_s * 1000))),
        ]
        self._channel = grpc.aio.insecure_channel(self._target, options=options)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        # The request goes out already serialized (see _infer_request); the answer is counted as it
        # comes off the wire, where its size is known.
        self._infer = self._channel.unary_unary(
            _INFER_METHOD, request_serializer=_as_is, response_deserializer=self._received
        )

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            self._stub = self._infer = None
            await channel.close()

    async def wait_ready(self) -> None:
        server: pb.ServerReadyResponse = await self._call("ServerReady", pb.ServerReadyRequest())
        if not server.ready:
            raise Unavailable("server not ready")
        request = pb.ModelReadyRequest(name=self.server.model, version=self._version)
        try:
            model: pb.ModelReadyResponse = await self._call("ModelReady", request)
            if model.ready:
                return
            # Not ready, or not there at all (Triton answers ready: false for a model it never
            # heard of, KServe NOT_FOUND): its metadata tells which.
            await self._call("ModelMetadata", pb.ModelMetadataRequest(name=self.server.model, version=self._version))
        except _Refused as exc:
            if exc.code in MODEL_MISSING_CODES:
                raise Rejected(f"the server has no such model ({exc})") from None
            raise
        raise Unavailable("model not ready yet")

    async def describe(self) -> ServerModel:
        request = pb.ModelMetadataRequest(name=self.server.model, version=self._version)
        metadata: pb.ModelMetadataResponse = await self._call("ModelMetadata", request)
        max_batch = None
        if self._read_config:
            config = await self._model_config()
            if config is not None:
                max_batch = config.max_batch_size if config.max_batch_size > 0 else None
        return ServerModel(
            inputs=[ServerTensor.v2(t.name, t.datatype, t.shape) for t in metadata.inputs],
            outputs=[ServerTensor.v2(t.name, t.datatype, t.shape) for t in metadata.outputs],
            max_batch=max_batch,
        )

    async def infer(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        if self._infer is None:
            raise RuntimeError("KServeGrpc used before open() or after close()")
        body = self._infer_request(feeds, outputs)
        try:
            answer: pb.ModelInferResponse = await self._infer(
                body, timeout=self.server.timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _sorted("ModelInfer", exc, self.server.timeout_s) from None
        # Counted once answered, as the HTTP transports count (the answer's bytes in _received).
        self.counts.requests += 1
        self.counts.sent += len(body)
        return _outputs(answer)

    def _infer_request(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> bytes:
        """ModelInferRequest's wire bytes: the header through protobuf, then each input's bytes
        appended as a ``raw_input_contents`` field, in ``inputs`` order (the protocol pairs them
        by position). Protobuf concatenates repeated fields: the server reads the same message."""
        arrays = [np.ascontiguousarray(array) for array in feeds.values()]
        try:
            tensors = [
                pb.ModelInferRequest.InferInputTensor(name=name, datatype=v2_datatype(array), shape=array.shape)
                for name, array in zip(feeds, arrays, strict=True)
            ]
        except ValueError as exc:
            raise Rejected(str(exc)) from None
        header = pb.ModelInferRequest(
            model_name=self.server.model,
            model_version=self._version,
            inputs=tensors,
            outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in outputs],
        )
        parts: list[bytes | memoryview] = [header.SerializeToString()]
        for array in arrays:
            data = array.data  # a memoryview, no copy: join reads the array's (C-contiguous) memory
            parts += [_RAW_INPUT_TAG, _varint(data.nbytes), data]
        return b"".join(parts)

    def _received(self, data: bytes) -> pb.ModelInferResponse:
        self.counts.received += len(data)
        response: pb.ModelInferResponse = pb.ModelInferResponse.FromString(data)
        return response

    async def _model_config(self) -> Any:
        """Triton's ModelConfig, or None from a server that does not have the call."""
        request = pb.ModelConfigRequest(name=self.server.model, version=self._version)
        try:
            response: pb.ModelConfigResponse = await self._call("ModelConfig", request)
        except _Refused as exc:
            if exc.code == grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise
        return response.config

    async def _call(self, method: str, request: Any) -> Any:
        """One unary call of the service other than ModelInfer, its failure sorted."""
        if self._stub is None:
            raise RuntimeError("KServeGrpc used before open() or after close()")
        try:
            return await getattr(self._stub, method)(request, timeout=self.server.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise _sorted(method, exc, self.server.timeout_s) from None


class _Refused(Rejected):
    """A status that is not worth retrying, with its code: ``wait_ready`` tells a missing model by
    it, ``describe`` a server without ModelConfig."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


def _target(url: str) -> str:
    """``host:port`` for gRPC from ``grpc://host:port`` (an IPv6 address in brackets)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port or DEFAULT_PORT}"


def _as_is(body: bytes) -> bytes:
    return body


def _varint(value: int) -> bytes:
    """Protobuf's base-128 varint, as a length is written on the wire."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _sorted(method: str, exc: grpc.RpcError, timeout_s: float) -> _Refused | Unavailable:
    """A failed call as a transport error: ``Unavailable`` for the statuses worth retrying."""
    # A grpc.aio call raises AioRpcError, which has code() and details(); RpcError itself has
    # neither, so an odd one is taken as a lost connection.
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNAVAILABLE
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        details = f"no answer within {timeout_s:g} s"
    problem = f"{method}: gRPC {code.name}: {_trimmed(details or '(no details)')}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (details or ""):
        # A message over either side's size limit: as big the next time, so not worth retrying.
        return _Refused(problem, code)
    if code in RETRIED_CODES:
        return Unavailable(problem)
    return _Refused(problem, code)


def _trimmed(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def _outputs(answer: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """The answer's outputs as arrays of their datatype and shape; ``BadAnswer`` where one is
    missing its data, has the wrong number of bytes for its shape, or is of a type numpy lacks."""
    raw = list(answer.raw_output_contents)
    if raw and len(raw) != len(answer.outputs):
        raise BadAnswer(f"an answer with {len(answer.outputs)} outputs but {len(raw)} raw contents")
    arrays = {}
    for index, output in enumerate(answer.outputs):
        name, datatype, shape = str(output.name), str(output.datatype), [int(d) for d in output.shape]
        dtype = V2_TO_NUMPY.get(datatype)
        if dtype is None:
            raise BadAnswer(f"output {name!r} is {datatype}, which this engine cannot read")
        count = math.prod(shape)
        if raw:
            data = raw[index]
            expected = count * np.dtype(dtype).itemsize
            if len(data) != expected:
                raise BadAnswer(
                    f"output {name!r} ({datatype} {shape}) came with {len(data)} bytes, expected {expected}"
                )
            array = np.frombuffer(data, dtype=dtype)
        else:
            array = _typed_contents(name, datatype, dtype, output, count)
        arrays[name] = array.reshape(shape)
    return arrays


def _typed_contents(name: str, datatype: str, dtype: str, output: Any, count: int) -> np.ndarray:
    """An output sent in InferTensorContents' typed lists rather than as raw bytes."""
    field = _TYPED_CONTENTS.get(datatype)
    values = getattr(output.contents, field) if field else ()
    if len(values) != count:
        if count and not len(values):
            raise BadAnswer(f"output {name!r} ({datatype}) came without data (no raw or typed contents)")
        raise BadAnswer(f"output {name!r} ({datatype} {list(output.shape)}) came with {len(values)} values")
    return np.array(values, dtype=dtype)
