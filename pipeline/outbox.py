"""Messages on their way to NATS: bounded, counted, and (on JetStream) retried until acknowledged.

Two delivery modes, two guarantees:

* **JetStream: at least once, deduplicated.** Up to ``max_pending`` messages are published at once
  without waiting for each other's acknowledgement. A message whose ack times out, or that could not
  be sent because the connection was down, is sent again with the same ``Nats-Msg-Id``, so the
  stream's duplicate window keeps one copy. A message is *sent* when acknowledged; it is *lost* only
  when abandoned (its ``retry_for_s`` deadline, the flush timeout at the end of a run, or a
  rejection by the server), with that reason.
* **Core NATS: at most once.** A message is sent when handed to the connection. While the
  connection is down, messages wait in this outbox; when it is full the oldest is lost as
  ``bus_down``. Messages in the socket when the server dies are lost without a trace: no protocol
  can count them without acks.

Both bound what waits by messages and bytes. ``put`` never waits (a callback may put a message);
JetStream's outbox makes producers wait for room (``room``) first, so a full outbox becomes
backpressure upstream; the core outbox never waits (a lossy mode must not slow the pipeline down).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError

from .config import JetStreamConfig, OutboxConfig

log = logging.getLogger("streamgraph.outbox")

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
RETRYABLE_API_CODES = {503}
"""JetStream answers 503 while it recovers its streams after a restart: try again."""


@dataclass(eq=False)
class Envelope:
    """One message and whom to tell how it went. ``on_sent``: acknowledged (JetStream) or handed
    to the connection (core). ``on_lost``: abandoned, with the reason."""

    subject: str
    payload: bytes
    msg_id: str | None = None
    on_sent: Callable[[], None] | None = None
    on_lost: Callable[[str], None] | None = None
    first_try: float = field(default_factory=time.monotonic)
    attempts: int = 0
    order: int = 0
    """Its place in first-send order (JetStream: retries go back to it)."""

    @property
    def headers(self) -> dict[str, str] | None:
        return {"Nats-Msg-Id": self.msg_id} if self.msg_id else None

    def sent(self) -> None:
        if self.on_sent is not None:
            self.on_sent()

    def lost(self, reason: str) -> None:
        if self.on_lost is not None:
            self.on_lost(reason)
        else:
            log.warning("message on %s abandoned: %s", self.subject, reason)


class Outbox(ABC):
    """Where the bus puts messages. ``put`` never waits; ``room`` is where producers wait."""

    def __init__(self, config: OutboxConfig) -> None:
        self.config = config
        self._bytes = 0
        self._count = 0
        self._waiters: set[asyncio.Future[None]] = set()
        """Tasks waiting for a change (room, a message to send, the end of a flush)."""
        self.retries = 0
        """Sends of a message after its first (JetStream only)."""
        self._stop_waiting = False
        self._closed = False
        """Flushed for good: what is put now is lost at once."""

    @property
    def depth(self) -> int:
        """Messages not yet sent (waiting, or in flight without an ack)."""
        return self._count

    @property
    def depth_bytes(self) -> int:
        return self._bytes

    def full(self) -> bool:
        return self._count >= self.config.max_messages or self._bytes >= self.config.max_bytes

    async def room(self) -> None:
        """Wait until the outbox can take a message (by default at once: a lossy outbox drops)."""
        return None

    def reconnected(self) -> None:
        """The connection is back: send what waits now."""
        self._notify()

    def stop_waiting(self) -> None:
        """End a ``flush`` in progress now (a second stop signal)."""
        self._stop_waiting = True
        self._notify()

    def _flushing(self, deadline: float) -> float:
        """Seconds a flush may still wait for messages to go (0: stop waiting)."""
        if not self._count or self._stop_waiting:
            return 0.0
        return max(0.0, deadline - time.monotonic())

    @abstractmethod
    def put(self, envelope: Envelope) -> None:
        """Take a message to send; a task of the outbox sends it."""

    async def settle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until every message put so far is sent (or given up on);
        whether it is. Unlike ``flush``, the outbox goes on working either way."""
        deadline = time.monotonic() + timeout_s
        while left := self._flushing(deadline):
            await self._wait_changed(left)
        return not self._count

    @abstractmethod
    async def flush(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for every message to be sent; abandon the rest (their
        ``on_lost`` says why) and return how many were abandoned."""

    def _hold(self, envelope: Envelope) -> None:
        self._count += 1
        self._bytes += len(envelope.payload)

    def _release(self, envelope: Envelope) -> None:
        self._count -= 1
        self._bytes -= len(envelope.payload)
        self._notify()

    def _notify(self) -> None:
        for waiter in self._waiters:
            _wake(waiter)

    async def _wait_changed(self, timeout_s: float | None = None) -> None:
        """Until the next ``_notify`` (or ``timeout_s``). Each waiter has its own future, made
        before the first await: one shared, cleared event loses wake-ups between several waiters.
        A timer rather than ``asyncio.wait_for``, which on Python 3.11 can swallow a cancel that
        comes with the wake-up (and then the sender never stops)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.add(waiter)
        timer = loop.call_later(timeout_s, _wake, waiter) if timeout_s is not None else None
        try:
            await waiter
        finally:
            self._waiters.discard(waiter)
            if timer is not None:
                timer.cancel()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class JetStreamOutbox(Outbox):
    """Pipelined JetStream publishing: a window of un-acked messages, retries with the same id."""

    def __init__(self, js: JetStreamContext, config: OutboxConfig, jetstream: JetStreamConfig) -> None:
        super().__init__(config)
        self._js = js
        self._jetstream = jetstream
        self._order = itertools.count()
        self._waiting: list[tuple[int, Envelope]] = []
        """Not sent yet, or to be sent again: a heap by first-send order, so retries go first."""
        self._in_flight: dict[Envelope, asyncio.Task[None]] = {}
        self._paused_until = 0.0
        self._backoff_s = BACKOFF_FIRST_S
        self._sender: asyncio.Task[None] | None = None

    async def room(self) -> None:
        while self.full():
            await self._wait_changed()

    def reconnected(self) -> None:
        self._paused_until = 0.0
        self._backoff_s = BACKOFF_FIRST_S
        super().reconnected()

    def put(self, envelope: Envelope) -> None:
        if self._closed:
            envelope.lost("closed")
            return
        self._hold(envelope)
        envelope.order = next(self._order)
        heapq.heappush(self._waiting, (envelope.order, envelope))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_loop(), name="outbox:jetstream")
        self._notify()

    async def _send_loop(self) -> None:
        while True:
            pause = self._paused_until - time.monotonic()
            if pause > 0:
                await self._wait_changed(pause)  # reconnected() ends the pause early
                continue
            if not self._waiting or len(self._in_flight) >= self._jetstream.max_pending:
                await self._wait_changed()
                continue
            _, envelope = heapq.heappop(self._waiting)
            self._in_flight[envelope] = asyncio.create_task(self._deliver(envelope))

    async def _deliver(self, envelope: Envelope) -> None:
        envelope.attempts += 1
        if envelope.attempts > 1:
            self.retries += 1
        try:
            await self._js.publish(
                envelope.subject, envelope.payload, timeout=self._jetstream.ack_timeout_s, headers=envelope.headers
            )
        except APIError as exc:
            if exc.code in RETRYABLE_API_CODES:
                self._retry_later(envelope, exc)
            else:
                self._finish(envelope, lost=f"rejected ({exc.description or exc.code})")
        except (NatsTimeoutError, NoStreamResponseError, NatsError, OSError, TimeoutError) as exc:
            # Not acknowledged: not sent, sent and lost, or stored with its ack lost. Sending it
            # again with the same id is right in all three cases.
            self._retry_later(envelope, exc)
        else:
            self._backoff_s = BACKOFF_FIRST_S
            self._finish(envelope)

    def _retry_later(self, envelope: Envelope, exc: BaseException) -> None:
        deadline = self._jetstream.retry_for_s
        if deadline is not None and time.monotonic() - envelope.first_try >= deadline:
            self._finish(envelope, lost="deadline")
            return
        log.debug("no ack for %s (try %d): %s", envelope.msg_id, envelope.attempts, exc or type(exc).__name__)
        # One failure pauses every send: during an outage they would all fail alike.
        self._paused_until = max(self._paused_until, time.monotonic() + self._backoff_s)
        self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
        del self._in_flight[envelope]
        heapq.heappush(self._waiting, (envelope.order, envelope))
        self._notify()

    def _finish(self, envelope: Envelope, *, lost: str | None = None) -> None:
        self._in_flight.pop(envelope, None)
        self._release(envelope)
        if lost is None:
            envelope.sent()
        else:
            envelope.lost(lost)

    async def flush(self, timeout_s: float) -> int:
        await self.settle(timeout_s)
        self._closed = True
        abandoned = self._count
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None
        for task in list(self._in_flight.values()):
            task.cancel()
        for envelope in [*self._in_flight, *(e for _, e in sorted(self._waiting, key=lambda pair: pair[0]))]:
            self._finish(envelope, lost="drain_timeout")
        self._waiting.clear()
        if abandoned:
            log.warning("outbox: %d message(s) not acknowledged within %.1f s, abandoned", abandoned, timeout_s)
        return abandoned


class CoreOutbox(Outbox):
    """Core NATS: hand messages to the connection in order; hold them while the bus is down."""

    def __init__(self, client: Client, config: OutboxConfig) -> None:
        super().__init__(config)
        self._client = client
        self._backlog: deque[Envelope] = deque()
        self._sender: asyncio.Task[None] | None = None

    def put(self, envelope: Envelope) -> None:
        if self._closed:
            envelope.lost("bus_down")
            return
        self._hold(envelope)
        self._backlog.append(envelope)
        while self.full() and len(self._backlog) > 1:
            oldest = self._backlog.popleft()
            self._release(oldest)
            oldest.lost("bus_down")
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_loop(), name="outbox:core")
        self._notify()

    async def _send_loop(self) -> None:
        while True:
            if not self._backlog:
                await self._wait_changed()
            elif await self._publish(self._backlog[0]):
                envelope = self._backlog.popleft()
                self._release(envelope)
                envelope.sent()
            else:
                await self._wait_changed(0.2)  # reconnected() wakes this at once

    async def _publish(self, envelope: Envelope) -> bool:
        """Hand one message to the connection; False if the bus is down."""
        if not self._client.is_connected:
            return False
        try:
            await self._client.publish(envelope.subject, envelope.payload, headers=envelope.headers)
        except (NatsError, OSError):
            return False
        return True

    async def flush(self, timeout_s: float) -> int:
        await self.settle(timeout_s)
        self._closed = True
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            self._sender = None
        abandoned = len(self._backlog)
        while self._backlog:
            envelope = self._backlog.popleft()
            self._release(envelope)
            envelope.lost("bus_down")
        if abandoned:
            log.warning("outbox: NATS still down after %.1f s, %d message(s) lost", timeout_s, abandoned)
        return abandoned
