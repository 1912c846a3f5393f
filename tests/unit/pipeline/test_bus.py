"""pipeline.bus: the nats-server child process, and Bus.connect/publish/close against real servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError

from pipeline.bus import Bus, NatsServer, free_port, nats_server_binary, subject_covers
from pipeline.config import JetStreamConfig, NatsConfig
from pipeline.errors import BusError, PipelineError

GUARD_S = 60.0  # hang guard; never a timing assertion


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def unique(stem: str) -> str:
    return f"{stem}{uuid.uuid4().hex[:10]}"


async def ready_subscription(bus: Bus, client: Client, subject_prefix: str) -> Any:
    """Subscribe to ``<subject_prefix>.>`` and wait until a message from ``bus`` gets through.

    A flushed SUB is not always enough: now and then nats-server drops the first message of a
    connection opened before the subscription (nats-io/nats.rs#1274); probing hides that race.
    """
    sub = await client.subscribe(f"{subject_prefix}.>")
    await client.flush()
    for attempt in range(50):
        await bus.client.publish(f"{subject_prefix}.ready.{attempt}", b"")
        await bus.client.flush()
        try:
            await sub.next_msg(timeout=1.0)
        except NatsTimeoutError:
            continue
        while True:  # late probes, if any, are not the test's messages
            try:
                await sub.next_msg(timeout=0.05)
            except NatsTimeoutError:
                return sub
    raise AssertionError("no message from the bus ever reached the subscriber")


def open_clients_since(before: set[asyncio.Task[Any]]) -> list[Client]:
    """nats-py clients whose tasks were started after ``before`` and that are still open."""
    clients: dict[int, Client] = {}
    for task in asyncio.all_tasks() - before:
        frame = getattr(task.get_coro(), "cr_frame", None)
        owner = frame.f_locals.get("self") if frame is not None else None
        if isinstance(owner, Client) and not owner.is_closed:
            clients[id(owner)] = owner
    return list(clients.values())


class Streams:
    """A plain client's JetStream view of the session server; streams named by ``new`` are
    deleted at teardown."""

    def __init__(self, js: Any) -> None:
        self.js = js
        self.created: list[str] = []

    def new(self) -> str:
        name = unique("JS")
        self.created.append(name)
        return name

    async def messages(self, name: str) -> int:
        return int((await self.js.stream_info(name)).state.messages)


@pytest.fixture()
async def streams(nats_server) -> AsyncIterator[Streams]:
    client = await nats.connect(nats_server.url)
    helper = Streams(client.jetstream())
    yield helper
    for name in helper.created:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await helper.js.delete_stream(name)
    await client.close()


# --- NatsServer -------------------------------------------------------------------------------------


def test_nats_server_binary_is_installed():
    binary = nats_server_binary()
    assert os.path.isfile(binary) and os.access(binary, os.X_OK)


def test_free_port_can_be_bound():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


async def test_nats_server_starts_on_a_free_port_and_stops():
    server = NatsServer()
    assert server.url == f"nats://127.0.0.1:{server.port}"
    assert refuses_connections(server.port)
    with server:
        client = await nats.connect(server.url)
        try:
            assert client.is_connected
            assert client.connected_url.port == server.port
        finally:
            await client.close()
    assert refuses_connections(server.port)
    server.stop()  # a second stop is harmless


async def test_nats_server_with_jetstream_keeps_a_store_until_stopped():
    with NatsServer(jetstream=True) as server:
        store = server._store.name
        assert os.path.isdir(store)
        client = await nats.connect(server.url)
        try:
            info = await client.jetstream().account_info()
            assert info.streams == 0
        finally:
            await client.close()
    assert not os.path.exists(store)


def test_nats_server_on_a_given_port():
    port = free_port()
    with NatsServer(port=port) as server:
        assert server.url.endswith(f":{port}")
        assert not refuses_connections(port)


def test_nats_server_on_a_port_already_in_use_is_a_bus_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = NatsServer(port=taken.getsockname()[1])
        try:
            with pytest.raises(BusError):
                server.start()
        finally:
            server.stop()


# --- Bus.connect --------------------------------------------------------------------------------------


async def test_connect_to_a_url_publishes_there(nats_server):
    prefix = unique("bus")
    bus = await Bus.connect(NatsConfig(url=nats_server.url, prefix=prefix), pipeline="unit")
    client = await nats.connect(nats_server.url)
    try:
        assert (bus.url, bus.prefix) == (nats_server.url, prefix)
        assert bus.client.is_connected
        # Once connected, reconnect forever: a bus restart must not end the pipeline.
        assert bus.client.options["max_reconnect_attempts"] == -1
        sub = await ready_subscription(bus, client, prefix)
        await bus.publish(f"{prefix}.unit.cam", b'{"n":1}', msg_id="unit.cam.0")
        await bus.publish(f"{prefix}.unit.cam", b'{"n":2}')
        first = await sub.next_msg(timeout=GUARD_S)
        second = await sub.next_msg(timeout=GUARD_S)
        assert (first.subject, first.data, first.headers) == (
            f"{prefix}.unit.cam",
            b'{"n":1}',
            {"Nats-Msg-Id": "unit.cam.0"},
        )
        assert (second.data, second.headers) == (b'{"n":2}', None)
    finally:
        await client.close()
        await bus.close()
    assert bus.client.is_closed


async def test_url_argument_overrides_the_config(nats_server):
    bus = await Bus.connect(NatsConfig(url="embedded"), pipeline="unit", url=nats_server.url)
    try:
        assert bus.url == nats_server.url
        assert bus._server is None  # nothing embedded was started
    finally:
        await bus.close()


async def test_close_delivers_what_was_published_before_it(nats_server):
    prefix = unique("drain")
    bus = await Bus.connect(NatsConfig(url=nats_server.url, prefix=prefix), pipeline="unit")
    client = await nats.connect(nats_server.url)
    try:
        sub = await ready_subscription(bus, client, prefix)
        for n in range(200):
            await bus.publish(f"{prefix}.unit.s", str(n).encode(), msg_id=f"unit.s.{n}")
        await bus.close()  # no flush of our own: close drains
        received = [int((await sub.next_msg(timeout=GUARD_S)).data) for _ in range(200)]
        assert received == list(range(200))
    finally:
        await client.close()


async def test_embedded_starts_and_stops_its_own_server():
    bus = await Bus.connect(NatsConfig(url="embedded", prefix="emb"), pipeline="unit")
    port = urlparse(bus.url).port
    assert port is not None
    try:
        assert bus.url == f"nats://127.0.0.1:{port}"
        client = await nats.connect(bus.url)  # a real server, reachable by anyone
        try:
            sub = await ready_subscription(bus, client, "emb")
            await bus.publish("emb.unit.cam", b"hello")
            assert (await sub.next_msg(timeout=GUARD_S)).data == b"hello"
        finally:
            await client.close()
    finally:
        await bus.close()
    assert refuses_connections(port)


async def test_embedded_with_jetstream_creates_the_stream():
    config = NatsConfig(url="embedded", prefix="emb", jetstream=JetStreamConfig(stream="EMB"))
    bus = await Bus.connect(config, pipeline="unit")
    port = urlparse(bus.url).port
    try:
        info = await bus.client.jetstream().stream_info("EMB")
        assert info.config.subjects == ["emb.unit.>"]
        await bus.publish("emb.unit.cam", b"{}", msg_id="unit.cam.0")
        assert (await bus.client.jetstream().stream_info("EMB")).state.messages == 1
    finally:
        await bus.close()
    assert port is not None and refuses_connections(port)


async def test_dead_url_is_a_bus_error_naming_the_url():
    url = f"nats://127.0.0.1:{free_port()}"  # nobody listens there
    config = NatsConfig(url=url, connect_timeout_s=0.5)
    with pytest.raises(BusError) as info:
        await asyncio.wait_for(Bus.connect(config, pipeline="unit"), GUARD_S)
    assert url in str(info.value)
    assert isinstance(info.value, PipelineError) and isinstance(info.value, ConnectionError)


@pytest.mark.parametrize("url", ["http://127.0.0.1:4222", "127.0.0.1:4222", "localhost", ""])
async def test_bad_url_scheme_is_refused_by_the_config_and_a_bus_error_given_as_override(url):
    with pytest.raises(ValueError, match="expected 'embedded' or nats://host:port"):
        NatsConfig(url=url)
    with pytest.raises(BusError) as info:  # --nats-url: not seen by the config's check
        await Bus.connect(NatsConfig(), pipeline="unit", url=url or " ")
    assert "nats.url" in str(info.value)
    assert repr(url or " ") in str(info.value)


# --- JetStream ------------------------------------------------------------------------------------------


async def test_jetstream_stream_is_created_and_duplicate_ids_are_dropped(nats_server, streams):
    prefix, stream = unique("js"), streams.new()
    config = NatsConfig(url=nats_server.url, prefix=prefix, jetstream=JetStreamConfig(stream=stream))
    bus = await Bus.connect(config, pipeline="unit")
    try:
        info = await streams.js.stream_info(stream)
        assert info.config.subjects == [f"{prefix}.unit.>"]
        assert info.state.messages == 0

        await bus.publish(f"{prefix}.unit.cam", b'{"seq":0}', msg_id="unit.cam.0")
        await bus.publish(f"{prefix}.unit.cam", b'{"seq":0,"again":true}', msg_id="unit.cam.0")
        assert (await streams.messages(stream)) == 1  # the server dropped the duplicate
        stored = await streams.js.get_msg(stream, seq=1)
        assert stored.data == b'{"seq":0}'
        assert stored.headers is not None and stored.headers["Nats-Msg-Id"] == "unit.cam.0"

        await bus.publish(f"{prefix}.unit.cam", b'{"seq":1}', msg_id="unit.cam.1")
        await bus.publish(f"{prefix}.unit.cam.events", b"{}")  # events are in the stream too
        assert (await streams.messages(stream)) == 3
    finally:
        await bus.close()


async def test_jetstream_reuses_an_existing_stream(nats_server, streams):
    prefix, stream = unique("js"), streams.new()
    config = NatsConfig(url=nats_server.url, prefix=prefix, jetstream=JetStreamConfig(stream=stream))
    first = await Bus.connect(config, pipeline="unit")
    await first.publish(f"{prefix}.unit.cam", b"{}", msg_id="unit.cam.0")
    await first.close()
    second = await Bus.connect(config, pipeline="unit")  # a restart: the stream is kept, not recreated
    try:
        assert (await streams.messages(stream)) == 1
        await second.publish(f"{prefix}.unit.cam", b"{}", msg_id="unit.cam.0")  # a replay after restart
        assert (await streams.messages(stream)) == 1
    finally:
        await second.close()


async def test_existing_stream_that_does_not_cover_the_subjects_is_a_bus_error(nats_server, streams):
    prefix, stream = unique("js"), streams.new()
    await streams.js.add_stream(name=stream, subjects=[f"{unique('other')}.>"])
    config = NatsConfig(url=nats_server.url, prefix=prefix, jetstream=JetStreamConfig(stream=stream))
    before = asyncio.all_tasks()
    with pytest.raises(BusError) as info:
        await Bus.connect(config, pipeline="unit")
    for client in open_clients_since(before):  # see the leak test below
        await client.close()
    assert repr(stream) in str(info.value)
    assert f"{prefix}.unit.>" in str(info.value)


async def test_failed_jetstream_setup_leaves_no_connection_open(nats_server, streams):
    prefix, stream = unique("js"), streams.new()
    await streams.js.add_stream(name=stream, subjects=[f"{unique('other')}.>"])
    config = NatsConfig(url=nats_server.url, prefix=prefix, jetstream=JetStreamConfig(stream=stream))
    before = asyncio.all_tasks()
    with pytest.raises(BusError):
        await Bus.connect(config, pipeline="unit")
    leaked = open_clients_since(before)
    try:
        assert leaked == []
    finally:
        for client in leaked:
            await client.close()


async def test_existing_stream_with_a_wider_wildcard_is_accepted(nats_server, streams):
    prefix, stream = unique("js"), streams.new()
    await streams.js.add_stream(name=stream, subjects=[f"{prefix}.>"])  # every pipeline under the prefix
    config = NatsConfig(url=nats_server.url, prefix=prefix, jetstream=JetStreamConfig(stream=stream))
    before = asyncio.all_tasks()
    try:
        bus = await Bus.connect(config, pipeline="unit")
    except BusError:
        for client in open_clients_since(before):  # the leak above
            await client.close()
        raise
    try:
        await bus.publish(f"{prefix}.unit.cam", b"{}", msg_id="unit.cam.0")
        assert (await streams.messages(stream)) == 1
    finally:
        await bus.close()


async def test_jetstream_on_a_server_without_it_is_a_bus_error():
    with NatsServer(jetstream=False) as server:
        config = NatsConfig(url=server.url, prefix="nojs", jetstream=JetStreamConfig(stream="NOJS"))
        before = asyncio.all_tasks()
        try:
            with pytest.raises(BusError):
                await asyncio.wait_for(Bus.connect(config, pipeline="unit"), GUARD_S)
        finally:
            for client in open_clients_since(before):
                await client.close()


@pytest.mark.parametrize(
    ("pattern", "subject", "covers"),
    [
        ("sg.demo.>", "sg.demo.>", True),
        ("sg.>", "sg.demo.>", True),
        (">", "sg.demo.>", True),
        ("sg.*.>", "sg.demo.>", True),
        ("sg.demo.*", "sg.demo.>", False),  # one token only, the pipeline has deeper subjects too
        ("sg.other.>", "sg.demo.>", False),
        ("sg.demo.cam.>", "sg.demo.>", False),
        ("sg.demo", "sg.demo.>", False),
        ("sg.demo.cam", "sg.demo.cam", True),
        ("sg.*.cam", "sg.demo.cam", True),
    ],
)
def test_subject_covers(pattern, subject, covers):
    assert subject_covers(pattern, subject) is covers
