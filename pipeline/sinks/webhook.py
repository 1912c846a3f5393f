"""``webhook``: batches of messages POSTed as a JSON array, signed, retried.

A POST carries up to ``max_batch`` messages (results and events, in the order they were made),
sent once it is full or ``batch_delay_ms`` after its first message. With a ``secret``, header
``X-Streamgraph-Signature: sha256=<hex>`` is the HMAC-SHA256 of the body under it (GitHub's
scheme): the receiver computes the same over the bytes it got and compares in constant time.
A 2xx is delivered; a connection error, a timeout, 408, 429 or a 5xx is tried again (the same
batch, with backoff); any other 4xx drops the batch (``rejected``) with the receiver's answer.
"""

from __future__ import annotations

import hashlib
import hmac

import aiohttp

from .base import Sink, SinkDown, SinkMessage, SinkRejected
from .config import WebhookSinkConfig

SIGNATURE_HEADER = "X-Streamgraph-Signature"
RETRY_STATUSES = frozenset({408, 429})


def signature(secret: str, body: bytes) -> str:
    """The ``X-Streamgraph-Signature`` value of a body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSink(Sink):
    kind = "webhook"

    def __init__(self, name: str, config: WebhookSinkConfig) -> None:
        super().__init__(
            name,
            max_pending=config.max_pending,
            max_batch=config.max_batch,
            batch_delay_s=config.batch_delay_ms / 1000.0,
        )
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    @property
    def where(self) -> str:
        return self.config.url

    async def connect(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))

    async def disconnect(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def deliver(self, batch: list[SinkMessage]) -> None:
        await self.connect()
        assert self._session is not None
        body = b"[" + b",".join(message.payload for message in batch) + b"]"
        headers = {**self.config.headers, "Content-Type": "application/json"}
        if self.config.secret:
            headers[SIGNATURE_HEADER] = signature(self.config.secret, body)
        try:
            async with self._session.post(self.config.url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    return
                answer = (await response.text(errors="replace"))[:200]
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SinkDown(f"POST {self.config.url}: {type(exc).__name__}: {exc}") from exc
        what = f"POST {self.config.url}: HTTP {response.status} {answer!r}"
        if response.status in RETRY_STATUSES or response.status >= 500:
            raise SinkDown(what)
        raise SinkRejected(what)
