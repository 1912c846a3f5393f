"""KServe v2 (the open inference protocol) over HTTP: Triton, KServe, OpenVINO Model Server.

Tensors travel as raw bytes after a JSON header (the binary tensor data extension:
``Inference-Header-Content-Length`` says where the JSON ends) where the server lists
``binary_tensor_data`` among its extensions, else as JSON lists (``server.binary`` forces one or
the other). Raw bytes are what the arrays hold already: no formatting or parsing of numbers, and
about a third of JSON's size for float32.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .dtypes import V2_TO_NUMPY, v2_datatype
from .http import HttpAnswer, HttpSession, dumps_json
from .options import ServerOptions
from .shared_memory import EXTENSION as SHARED_MEMORY
from .shared_memory import SharedMemoryInputs
from .transport import BadAnswer, Rejected, ServerModel, ServerTensor, Transport, Unavailable

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_EXTENSION = "binary_tensor_data"


class KServeHttp(Transport):
    def __init__(self, server: ServerOptions, *, read_config: bool) -> None:
        super().__init__(server)
        self._read_config = read_config
        """Ask for Triton's model configuration (``max_batch_size``), an extension of Triton's."""
        self._http = HttpSession(server, self.counts)
        self._binary = server.binary is True
        version = f"/versions/{server.version}" if server.version else ""
        self._model_path = f"/v2/models/{server.model}{version}"
        self._shared: SharedMemoryInputs | None = None
        if getattr(server, "shared_memory", False):  # triton's key
            self._shared = SharedMemoryInputs(self._http, server.max_in_flight)

    @property
    def protocol(self) -> str:
        if self._shared is not None:
            return "KServe v2 HTTP, inputs in shared memory"
        return f"KServe v2 HTTP, {'binary' if self._binary else 'JSON'}"

    async def open(self) -> None:
        await self._http.open()

    async def close(self) -> None:
        if self._shared is not None:
            await self._shared.close()
        await self._http.close()

    async def wait_ready(self) -> None:
        server = await self._http.get("/v2/health/ready", allow=range(400, 500))
        if not server.ok:
            raise Unavailable(f"server not ready (HTTP {server.status}: {server.message()})")
        model = await self._http.get(f"{self._model_path}/ready", allow=range(400, 500))
        if model.ok:
            return
        # Not ready, or not there at all: the model's metadata tells which.
        metadata = await self._http.get(self._model_path, allow=range(400, 500))
        if not metadata.ok:
            raise Rejected(f"the server has no such model (HTTP {metadata.status}: {metadata.message()})")
        raise Unavailable(f"model not ready yet (HTTP {model.status}: {model.message()})")

    async def describe(self) -> ServerModel:
        about = (await self._http.get("/v2")).json()
        extensions = (about.get("extensions") if isinstance(about, dict) else None) or []
        if self.server.binary == "auto":
            self._binary = BINARY_EXTENSION in extensions
        if self._shared is not None:
            if SHARED_MEMORY not in extensions:
                raise Rejected(f"shared_memory: the server does not list the {SHARED_MEMORY} extension")
            await self._shared.open()
        metadata = (await self._http.get(self._model_path)).json()
        if not isinstance(metadata, dict):
            raise BadAnswer(f"model metadata is not a JSON object: {metadata!r:.200}")
        max_batch = None
        if self._read_config:
            config = await self._http.get(f"{self._model_path}/config", allow=range(400, 500))
            if config.ok:
                size = config.json().get("max_batch_size")
                max_batch = size if isinstance(size, int) and size > 0 else None
        return ServerModel(
            inputs=[_tensor(t) for t in metadata.get("inputs") or []],
            outputs=[_tensor(t) for t in metadata.get("outputs") or []],
            max_batch=max_batch,
        )

    async def infer(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        path = f"{self._model_path}/infer"
        if self._shared is not None:
            return await self._infer_shared(path, feeds, outputs)
        if self._binary:
            header, tensors = _binary_request(feeds, outputs)
            answer = await self._http.post(
                path,
                header + b"".join(tensors),
                content_type="application/octet-stream",
                headers={HEADER_LENGTH: str(len(header))},
            )
        else:
            answer = await self._http.post(path, _json_request(feeds, outputs), content_type="application/json")
        return _parse_answer(answer)

    async def _infer_shared(self, path: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        assert self._shared is not None
        region, inputs = await self._shared.write(feeds)
        wanted = [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
        body = json.dumps({"inputs": inputs, "outputs": wanted}).encode()
        try:
            try:
                answer = await self._http.post(path, body, content_type="application/json")
            except Rejected as exc:
                if "shared memory" not in str(exc).lower():
                    raise
                await self._shared.register_again(region)  # a restarted server forgot it
                answer = await self._http.post(path, body, content_type="application/json")
        finally:
            self._shared.release(region)
        return _parse_answer(answer)


def _tensor(entry: Any) -> ServerTensor:
    if not isinstance(entry, dict) or "name" not in entry:
        raise BadAnswer(f"model metadata lists a tensor without a name: {entry!r:.200}")
    return ServerTensor.v2(entry["name"], entry.get("datatype", "?"), entry.get("shape") or [])


def _binary_request(feeds: dict[str, np.ndarray], outputs: list[str]) -> tuple[bytes, list[bytes]]:
    """The JSON header and each input's bytes, in the header's order."""
    inputs, tensors = [], []
    for name, array in feeds.items():
        data = np.ascontiguousarray(array).tobytes()
        inputs.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": v2_datatype(array),
                "parameters": {"binary_data_size": len(data)},
            }
        )
        tensors.append(data)
    wanted = [{"name": name, "parameters": {"binary_data": True}} for name in outputs]
    return json.dumps({"inputs": inputs, "outputs": wanted}).encode(), tensors


def _json_request(feeds: dict[str, np.ndarray], outputs: list[str]) -> bytes:
    inputs = [
        {"name": name, "shape": list(array.shape), "datatype": v2_datatype(array), "data": array.ravel().tolist()}
        for name, array in feeds.items()
    ]
    # Triton sends outputs as bytes unless told not to, even to a JSON request.
    wanted = [{"name": name, "parameters": {"binary_data": False}} for name in outputs]
    return dumps_json({"inputs": inputs, "outputs": wanted})  # the tensors as lists: pydantic-core's encoder


def _parse_answer(answer: HttpAnswer) -> dict[str, np.ndarray]:
    """The outputs of an infer response, binary or JSON (the server may answer JSON either way)."""
    length = answer.headers.get(HEADER_LENGTH)
    if length is None:
        header, body = answer.json(), b""
    else:
        try:
            split = int(length)
            header = json.loads(answer.body[:split])
        except ValueError:
            raise BadAnswer(f"a binary answer whose JSON header ({HEADER_LENGTH}: {length}) does not parse") from None
        body = answer.body[split:]
    if not isinstance(header, dict) or not isinstance(header.get("outputs"), list):
        raise BadAnswer(f"an infer answer without outputs: {str(header)[:200]}")
    arrays, offset = {}, 0
    view = memoryview(body)
    for output in header["outputs"]:
        name, datatype, shape = output.get("name"), output.get("datatype"), output.get("shape")
        dtype = V2_TO_NUMPY.get(str(datatype))
        if not isinstance(name, str) or dtype is None or not isinstance(shape, list):
            raise BadAnswer(f"an output this engine cannot read: {str(output)[:200]}")
        size = (output.get("parameters") or {}).get("binary_data_size")
        try:
            if size is not None:
                array = np.frombuffer(view[offset : offset + size], dtype=dtype)
                offset += size
            else:
                array = np.asarray(output.get("data"), dtype=dtype)
            arrays[name] = array.reshape(shape)
        except (ValueError, TypeError) as exc:
            raise BadAnswer(f"output {name!r} ({datatype} {shape}) does not match its data: {exc}") from None
    return arrays
