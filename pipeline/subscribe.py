"""``streamgraph subscribe``: print the messages of a subject as they arrive.

When the server goes away the subscriber reconnects (and its subscription with it) for at most
``reconnect_s``; then it gives up with a ``BusError`` naming the server, so a script or a person
watching it learns that nothing will come any more instead of waiting forever.

The URL takes the forms ``nats.url`` takes (``nats://user:password@host:port``, ``tls://...``);
``auth`` holds the rest (a credentials file, TLS files), as ``pipeline.natsconnect`` reads them. A
password never appears in what the command prints.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from .errors import BusError, ConfigError
from .natsconnect import NO_AUTH, KeyName, NatsAuth, config_key, nats_target, open_connection
from .urls import nats_url_problem

log = logging.getLogger("streamgraph.subscribe")

CONNECT_TIMEOUT_S = 5.0
INITIAL_CONNECT_ATTEMPTS = 3
RECONNECT_WAIT_S = 0.5
"""Between two reconnect attempts: a restarted server is found within about this."""


async def subscribe(
    url: str,
    subject: str,
    *,
    count: int = 0,
    reconnect_s: float = 30.0,
    write: Callable[[str], None] = lambda line: print(line, flush=True),
    auth: NatsAuth = NO_AUTH,
    key: KeyName = config_key,
) -> None:
    """Write ``<subject> <message>`` per message (JSON compacted) until ``count`` messages
    (0: never). Raises ``BusError`` when it cannot connect, or when the server is gone for longer
    than ``reconnect_s`` (0: give up at the first disconnect); ``ConfigError`` (naming the
    setting by ``key``) for a bad URL or a missing file."""
    if problem := nats_url_problem(url):
        raise ConfigError(key("url"), problem)
    target = nats_target(url, auth, key=key)
    watch = _ConnectionWatch(target.shown, reconnect_s)
    # Connected, the client reconnects forever: the time limit is ours (``reconnect_s``).
    client = await open_connection(
        target,
        attempts=INITIAL_CONNECT_ATTEMPTS,
        connect_timeout=CONNECT_TIMEOUT_S,
        reconnect_time_wait=RECONNECT_WAIT_S,
        error_cb=watch.error,
        disconnected_cb=watch.disconnected,
        reconnected_cb=watch.reconnected,
        closed_cb=watch.closed,
    )
    received = 0

    async def show(msg: Any) -> None:
        nonlocal received
        if count and received >= count:  # arrived before the drain took the subscription away
            return
        write(f"{msg.subject} {_compact(msg.data)}")
        received += 1
        if count and received >= count:
            watch.finish()

    await client.subscribe(subject, cb=show)
    await client.flush()  # the server has the subscription: whatever is published from now on arrives
    print(f"subscribed to {subject} on {target.shown}", file=sys.stderr, flush=True)
    try:
        await watch.finished.wait()
    finally:
        watch.closing = True
        if client.is_connected:
            await client.drain()
        else:  # nothing to flush to; close() also ends nats-py's reconnect loop
            await client.close()
    if watch.gave_up is not None:
        raise BusError(watch.gave_up)


def _compact(data: bytes) -> str:
    try:
        return json.dumps(json.loads(data), separators=(",", ":"))
    except ValueError:
        return data.decode(errors="replace")


class _ConnectionWatch:
    """nats-py's connection callbacks: a timer runs from a disconnect to the next reconnect, and
    ends the subscription when it fires first."""

    def __init__(self, url: str, reconnect_s: float) -> None:
        self.url = url
        self.reconnect_s = reconnect_s
        self.finished = asyncio.Event()
        self.gave_up: str | None = None
        """Why the subscription ended without its count: the error the command exits with."""
        self.closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._disconnected = False

    def finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.finished.set()

    def _give_up(self, why: str) -> None:
        if not self.finished.is_set():
            self.gave_up = why
            self.finish()

    async def error(self, exc: Exception) -> None:
        # While reconnecting every failed attempt reports here: the disconnect said it all once.
        if not self.closing:
            (log.debug if self._disconnected else log.warning)("NATS: %s", exc or type(exc).__name__)

    async def disconnected(self) -> None:
        if self.closing or self._disconnected:
            return
        self._disconnected = True
        window = self.reconnect_s
        log.warning("lost the NATS server at %s; reconnecting for up to %g s", self.url, window)
        why = f"lost the NATS server at {self.url} and could not reconnect within {window:g} s"
        self._timer = asyncio.get_running_loop().call_later(window, self._give_up, why)

    async def reconnected(self) -> None:
        self._disconnected = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        log.info("reconnected to the NATS server at %s", self.url)

    async def closed(self) -> None:
        # nats-py closed the connection by itself (not our drain): nothing more will arrive.
        if not self.closing:
            self._give_up(f"the connection to the NATS server at {self.url} was closed")
