"""TorchServe's inference API, with the tensor handler of ``servers/torchserve``.

TorchServe leaves the body of a request to the model's handler. With ``tensor_handler.py`` it is
an ``.npz``: one array per input by name in the request, every output by name in the answer
(uncompressed: raw array bytes, no number formatting either way; ``servers/torchserve/README.md``
has the whole contract). ``POST {url}/predictions/{model}[/{version}]`` runs one batch.

TorchServe's inference API has no model metadata, so ``describe`` lists no tensors and the model
card is taken as it is; the engine still checks every answer's names, dtypes and shapes.
"""

from __future__ import annotations

import io
import zipfile
from urllib.parse import quote

import numpy as np

from .http import HttpSession, trimmed
from .options import ServerOptions
from .transport import BadAnswer, Rejected, ServerModel, Transport, Unavailable

NPZ = "application/octet-stream"

DEFAULT_MAX_REQUEST_SIZE = 6553500
"""TorchServe's limit on a request's body, in bytes: one 1x3x640x640 float32 batch fits, four do not."""


class TorchServeRest(Transport):
    def __init__(self, server: ServerOptions) -> None:
        super().__init__(server)
        self._http = HttpSession(server, self.counts)
        version = f"/{quote(server.version, safe='')}" if server.version else ""
        self._predictions = f"/predictions/{quote(server.model, safe='')}{version}"

    @property
    def protocol(self) -> str:
        return "TorchServe"

    async def open(self) -> None:
        await self._http.open()

    async def close(self) -> None:
        await self._http.close()

    async def wait_ready(self) -> None:
        """``/ping`` says the server is healthy; then an empty request to the model, which the
        tensor handler answers at once, says it is there (not 404) with a worker (not 503)."""
        ping = await self._http.get("/ping", allow=(500,))
        health = ping.json() if ping.ok else None
        status = health.get("status") if isinstance(health, dict) else None
        if status != "Healthy":
            raise Unavailable(f"/ping: {status or ping.message()}")
        probe = await self._http.post(self._predictions, b"", content_type=NPZ, allow=range(400, 500))
        if probe.status == 404:
            raise Rejected(f"no model {self.server.model!r} on the server: {probe.message()}")

    async def describe(self) -> ServerModel:
        return ServerModel()

    async def infer(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        body = write_npz(feeds)
        answer = await self._http.post(self._predictions, body, content_type=NPZ, allow=(413,))
        if answer.status == 413:  # TorchServe answers it with no body: say which setting it is
            raise Rejected(
                f"HTTP 413: the request's {len(body)} bytes are over TorchServe's max_request_size "
                f"({DEFAULT_MAX_REQUEST_SIZE} by default): raise it (and max_response_size) in config.properties"
            )
        arrays = read_npz(answer.body)
        return {name: arrays[name] for name in outputs if name in arrays}


def write_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """What ``numpy.savez`` writes (a stored zip of ``name.npy``), for any names: ``savez`` takes
    them as keyword arguments, so an input called ``file`` would collide with its own. (The
    handler has the same few lines: it runs in TorchServe's environment, without this project.)"""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return buffer.getvalue()


def read_npz(body: bytes) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` answer; ``BadAnswer`` for anything else (a handler other than
    the tensor handler answers JSON or text)."""
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except Exception:  # np.load raises whatever its zip or header parsing met
        raise BadAnswer(f"expected an .npz of the outputs (tensor_handler.py), got {trimmed(body)!r}") from None
