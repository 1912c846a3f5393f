"""HTTP for the transports that speak it: one aiohttp session each, its failures sorted for the engine.

A transport makes one ``HttpSession`` in ``open`` and closes it in ``close``. The session keeps at
most ``server.max_in_flight`` keep-alive connections (the engine never has more requests out at
once) and gives each request ``server.timeout_s`` in all. Every failure leaves it as one of the
transport errors, so a transport only deals with the answers it wants:

* no connection, a dropped one, or no answer in time: ``Unavailable``;
* 502, 503, 504 (a proxy without a backend, a server starting or overloaded): ``Unavailable``;
* any other status outside 2xx, unless the caller lists it in ``allow``: ``Rejected`` with the
  status and the server's own message (the ``error`` or ``message`` field of a JSON body, as TF
  Serving, KServe v2 and TorchServe send it, else the body's text), trimmed.

``post`` counts its bytes in the transport's ``TransferCounts`` (those are the inference requests);
``get`` does not (readiness and metadata are not what a batch costs).

``dumps_json`` and ``loads_json`` are the JSON codec for tensors as nested lists: pydantic-core's
(already installed with pydantic) writes a 1x3x640x640 float32 tensor's ``tolist()`` about six times
as fast as ``json.dumps`` (0.12 s against 1.05 s here) and reads it back four times as fast (0.14 s
against 0.59 s), with the same numbers. Both keep ``NaN`` and ``Infinity`` as the bare tokens that TF
Serving and Python's ``json`` read.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import pydantic_core

from .options import ServerOptions
from .transport import BadAnswer, Rejected, TransferCounts, Unavailable

UNAVAILABLE_STATUSES = frozenset({502, 503, 504})
"""What a proxy or a busy server answers while it cannot serve: worth another try."""

MESSAGE_LIMIT = 300
"""Characters of a server's error message kept in ours (some send a whole stack trace)."""


@dataclass(frozen=True)
class HttpAnswer:
    """One answer: its status, headers (case-insensitive) and whole body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON; ``BadAnswer`` if it is not."""
        try:
            return loads_json(self.body)
        except ValueError:
            raise BadAnswer(f"expected JSON, got {trimmed(self.body)!r}") from None

    def message(self) -> str:
        """The server's own words for an error: the ``error`` or ``message`` field of a JSON
        object, else the body's text; trimmed."""
        try:
            data = loads_json(self.body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            for key in ("error", "message"):
                if isinstance(data.get(key), str):
                    return trimmed(data[key])
        return trimmed(self.body)


class HttpSession:
    """The connection pool of one transport, on the event loop. ``path`` arguments start with
    ``/`` and follow the server's URL."""

    def __init__(self, server: ServerOptions, counts: TransferCounts) -> None:
        self.server = server
        self.counts = counts
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.server.max_in_flight)
            timeout = aiohttp.ClientTimeout(total=self.server.timeout_s)
            # No Accept-Encoding: Triton gzips every answer a client says it takes, and float
            # tensors hardly shrink, while deflating them costs both ends CPU (measured in
            # bench/remote.py: about 45 ms of the server's per batch of four frames).
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=timeout,
                headers=self.server.headers,
                skip_auto_headers={"Accept-Encoding"},
            )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def get(self, path: str, *, allow: Collection[int] = ()) -> HttpAnswer:
        """GET ``path``; a status in ``allow`` (such as 404) comes back instead of raising."""
        return await self._request("GET", path, None, {}, allow)

    async def post(
        self,
        path: str,
        body: bytes,
        *,
        content_type: str,
        headers: Mapping[str, str] | None = None,
        allow: Collection[int] = (),
    ) -> HttpAnswer:
        """POST ``body`` to ``path``, counted in ``counts``."""
        answer = await self._request("POST", path, body, {"Content-Type": content_type, **(headers or {})}, allow)
        self.counts.requests += 1
        self.counts.sent += len(body)
        self.counts.received += len(answer.body)
        return answer

    async def _request(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str], allow: Collection[int]
    ) -> HttpAnswer:
        if self._session is None:
            raise RuntimeError("HttpSession used before open() or after close()")
        url = self.server.url + path
        try:
            async with self._session.request(method, url, data=body, headers=headers) as response:
                answer = HttpAnswer(response.status, response.headers, await response.read())
        except TimeoutError:  # asyncio's and aiohttp's timeouts are this builtin from Python 3.11 on
            raise Unavailable(f"{method} {url}: no answer within {self.server.timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise Unavailable(f"{method} {url}: {describe_client_error(exc)}") from None
        if answer.ok or answer.status in allow:
            return answer
        problem = f"{method} {url}: HTTP {answer.status}: {answer.message() or '(no message)'}"
        if answer.status in UNAVAILABLE_STATUSES:
            raise Unavailable(problem)
        raise Rejected(problem)


def dumps_json(value: Any) -> bytes:
    """``value`` (dicts, lists, numbers, strings) as compact JSON."""
    if _FAST_DUMPS:
        return pydantic_core.to_json(value, inf_nan_mode="constants")
    return json.dumps(value, separators=(",", ":")).encode()


def loads_json(body: bytes) -> Any:
    """JSON text as Python values; ``ValueError`` if it is not JSON."""
    return pydantic_core.from_json(body)


def _writes_nan() -> bool:
    # An older pydantic-core may lack the ``inf_nan_mode`` keyword or write NaN as null: there the
    # standard library's slower encoder keeps a tensor's values as they are.
    try:
        return pydantic_core.to_json([float("nan")], inf_nan_mode="constants") == b"[NaN]"
    except TypeError:
        return False


_FAST_DUMPS = _writes_nan()


def trimmed(text: str | bytes, limit: int = MESSAGE_LIMIT) -> str:
    """One line of at most ``limit`` characters."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_client_error(exc: aiohttp.ClientError) -> str:
    """aiohttp's message, or the error's class where it has none (``ServerDisconnectedError``)."""
    return str(exc) or type(exc).__name__
