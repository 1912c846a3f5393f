"""The NATS control plane on a server with authorization: the configuration of docs/security.md
(read from there) run by a real nats-server, the real service (``streamgraph run``) connected as
``service``, and plain nats-py clients as ``operator`` and ``viewer``.

What is refused is refused by the server (a publish permission violation: the request never
reaches the service) or by the service (the API token rule); every check of what did or did not
happen is a real answer (a ``list`` as operator, a message received), never a wait for silence.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import nats
import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from pipeline.bus import NatsServer

from .secure import configured_server, doc_block
from .support import GUARD_S, start_cli, until

PIPELINE = "auth-test"
PREFIX = "streamgraph"
TOKEN = secrets.token_hex(8)
PASSWORDS = {
    # The service's holds characters a URL must percent-encode: the URL is decoded before use.
    "service": f"sv@{secrets.token_hex(6)}/x",
    "operator": f"op{secrets.token_hex(6)}",
    "viewer": f"vw{secrets.token_hex(6)}",
}
CONFIG = f"""pipeline: {PIPELINE}
nats:
  url: ${{env:STREAMGRAPH_NATS_URL}}
api:
  listen: 127.0.0.1:0
  token: ${{env:STREAMGRAPH_TOKEN}}
stages:
  - name: cameras
    type: streams
  - name: decode
    type: decode
    inputs: [cameras]
  - name: publish
    type: publish
    inputs: [decode]
"""


def user_url(server: NatsServer, user: str, password: str | None = None) -> str:
    secret = quote(PASSWORDS[user] if password is None else password, safe="")
    return f"nats://{user}:{secret}@127.0.0.1:{server.port}"


def subject(operation: str) -> str:
    return f"{PREFIX}.control.streams.{operation}"


@dataclass
class Peer:
    """A nats-py client as one of the users, with the errors the server sent it."""

    client: Client
    errors: list[str] = field(default_factory=list)

    async def ask(self, operation: str, body: dict[str, Any], *, token: bool = True) -> dict[str, Any]:
        data = json.dumps({**body, "token": TOKEN} if token else body).encode()
        reply = await self.client.request(subject(operation), data, timeout=GUARD_S)
        answer: dict[str, Any] = json.loads(reply.data)
        return answer

    async def ids(self) -> set[str]:
        listed = await self.ask("list", {})
        assert listed["ok"], listed
        return {stream["id"] for stream in listed["streams"]}


async def connect_as(server: NatsServer, user: str) -> Peer:
    errors: list[str] = []

    async def error(exc: Exception) -> None:
        errors.append(str(exc))

    client = await nats.connect(user_url(server, user), error_cb=error, allow_reconnect=False)
    return Peer(client, errors)


@dataclass
class Service:
    server: NatsServer
    process: asyncio.subprocess.Process
    operator: Peer
    clip: Path
    """The sample, in the config's directory (a file a stream added at run time may open)."""
    stdout: str = ""
    stderr: str = ""


@pytest.fixture()
async def service(
    tmp_path: Path, sample_video: Path, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Service]:
    """nats-server with the documented authorization, and ``streamgraph run`` connected as
    ``service`` (its URL, with the password, from the environment), ready: it answers a ``list``."""
    for user, password in PASSWORDS.items():  # what the documented config reads from the environment
        monkeypatch.setenv(f"STREAMGRAPH_{user.upper()}_PASSWORD", password)
    config = tmp_path / "service.yaml"
    config.write_text(CONFIG)
    clip = tmp_path / sample_video.name
    shutil.copyfile(sample_video, clip)
    with configured_server(doc_block("authorization"), tmp_path) as server:
        env = {**cli_env, "STREAMGRAPH_NATS_URL": user_url(server, "service"), "STREAMGRAPH_TOKEN": TOKEN}
        process = await start_cli("--log-level", "DEBUG", "run", str(config), "--no-progress", env=env)
        operator = await connect_as(server, "operator")
        running = Service(server, process, operator, clip)
        try:
            await _until_answered(running)
            yield running
        finally:
            await operator.client.drain()
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
            stdout, stderr = await asyncio.wait_for(process.communicate(), GUARD_S)
            running.stdout, running.stderr = stdout.decode(), stderr.decode()
    assert process.returncode == 0, running.stderr
    # The service names its server, the password masked, and shows no secret anywhere.
    assert f"publishing to nats://service:***@127.0.0.1:{server.port}" in running.stderr
    _assert_no_secret(running.stdout + running.stderr)


async def _until_answered(service: Service) -> None:
    async def poll() -> None:
        while True:
            if service.process.returncode is not None:
                _, err = await service.process.communicate()
                raise AssertionError(f"the service exited ({service.process.returncode}): {err.decode()}")
            try:
                await service.operator.ask("list", {})
                return
            except (NoRespondersError, NatsTimeoutError):  # not subscribed yet
                await asyncio.sleep(0.1)

    await asyncio.wait_for(poll(), GUARD_S)


def _assert_no_secret(text: str) -> None:
    for user, password in PASSWORDS.items():
        assert password not in text and quote(password, safe="") not in text, f"{user}'s password leaked"
    assert TOKEN not in text, "the API token leaked"


def _stream(clip: Path, stream_id: str) -> dict[str, Any]:
    return {"id": stream_id, "uri": str(clip), "options": {"rate": "native", "loop": True}}


async def test_operator_controls_streams_with_the_token_and_the_server_refuses_the_viewer(service: Service) -> None:
    operator = service.operator
    # The service's own rule: with api.token set, a request without it is refused.
    refused = await operator.ask("add", _stream(service.clip, "cam"), token=False)
    assert refused["ok"] is False and refused["status"] == 401, refused
    assert await operator.ids() == set()

    added = await operator.ask("add", _stream(service.clip, "cam"))
    assert added["ok"] is True and added["stream"]["id"] == "cam", added
    assert await operator.ids() == {"cam"}

    # The viewer may read results: a subscription to the pipeline's subjects receives them.
    viewer = await connect_as(service.server, "viewer")
    try:
        results: list[str] = []

        async def on_result(msg: Any) -> None:
            results.append(msg.subject)

        await viewer.client.subscribe(f"{PREFIX}.{PIPELINE}.>", cb=on_result)
        await viewer.client.flush()
        await until(lambda: f"{PREFIX}.{PIPELINE}.cam" in results, "a result received by the viewer")

        # The viewer may not publish to the control subjects: the server refuses both requests
        # (it says so to the viewer), they never reach the service, no reply comes.
        replies: list[bytes] = []

        async def on_reply(msg: Any) -> None:
            replies.append(msg.data)

        inbox = f"{PREFIX}.viewer-inbox.control"
        await viewer.client.subscribe(inbox, cb=on_reply)
        for operation, body in (("remove", {"id": "cam"}), ("add", _stream(service.clip, "intruder"))):
            data = json.dumps({**body, "token": TOKEN}).encode()  # even with the token
            await viewer.client.publish(subject(operation), data, reply=inbox)
            await viewer.client.flush()
            violation = f'permissions violation for publish to "{subject(operation)}"'

            def refused_or_answered(v: str = violation) -> bool:
                return bool(replies) or any(v in e.lower() for e in viewer.errors)

            await until(refused_or_answered, f"the server's {violation}")
            assert replies == [], f"the service answered the viewer's {operation}: {replies}"
        assert await operator.ids() == {"cam"}  # neither removed nor added

        # ...nor subscribe to them (where the operator's token travels).
        await viewer.client.subscribe(f"{PREFIX}.control.>")
        violation = f'permissions violation for subscription to "{PREFIX}.control.>"'
        await until(lambda: any(violation in e.lower() for e in viewer.errors), "the subscription violation")
    finally:
        await viewer.client.close()

    removed = await operator.ask("remove", {"id": "cam"})
    assert removed == {"ok": True, "id": "cam", "removed": True}
    assert await operator.ids() == set()


async def test_the_viewer_never_receives_control_requests_and_subscribe_takes_its_url(
    service: Service, cli_env: dict[str, str]
) -> None:
    """A viewer subscribed to everything under the prefix gets results and events, not the control
    requests (which carry the token); ``streamgraph subscribe`` connects as the viewer with the
    password in its URL and never prints it."""
    viewer = await connect_as(service.server, "viewer")
    seen: list[tuple[str, bytes]] = []

    async def record(msg: Any) -> None:
        seen.append((msg.subject, msg.data))

    try:
        await viewer.client.subscribe(f"{PREFIX}.>", cb=record)
        await viewer.client.flush()
        listing = await service.operator.ask("list", {})
        assert listing["ok"], listing
        added = await service.operator.ask("add", _stream(service.clip, "cam"))
        assert added["ok"], added
        # Results of "cam" are published after the service received the add request, so the
        # request, had the server passed it to the viewer, would have arrived before them.
        await until(lambda: any(s == f"{PREFIX}.{PIPELINE}.cam" for s, _ in seen), "a result of 'cam'")

        command = await start_cli(
            "subscribe",
            f"{PREFIX}.{PIPELINE}.>",
            "--nats-url",
            user_url(service.server, "viewer"),
            "--count",
            "2",
            env=cli_env,
        )
        stdout, stderr = await asyncio.wait_for(command.communicate(), GUARD_S)
        out, err = stdout.decode(), stderr.decode()
        assert command.returncode == 0, err
        lines = out.splitlines()
        assert len(lines) == 2 and all(line.startswith(f"{PREFIX}.{PIPELINE}.cam") for line in lines), out
        assert f"on nats://viewer:***@127.0.0.1:{service.server.port}" in err
        _assert_no_secret(out + err)
    finally:
        await viewer.client.close()
    subjects = {s for s, _ in seen}
    assert f"{PREFIX}.{PIPELINE}.cam.events" in subjects
    assert not any(s.startswith(f"{PREFIX}.control.") for s in subjects), subjects
    assert not any(TOKEN.encode() in data for _, data in seen)
    assert (await service.operator.ask("remove", {"id": "cam"}))["ok"]


async def test_a_wrong_password_fails_the_start_naming_the_server_without_the_password(
    tmp_path: Path, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for user, password in PASSWORDS.items():
        monkeypatch.setenv(f"STREAMGRAPH_{user.upper()}_PASSWORD", password)
    config = tmp_path / "service.yaml"
    config.write_text(CONFIG)
    wrong = PASSWORDS["operator"]  # a real password, of another user
    with configured_server(doc_block("authorization"), tmp_path) as server:
        env = {**cli_env, "STREAMGRAPH_NATS_URL": user_url(server, "service", wrong), "STREAMGRAPH_TOKEN": TOKEN}
        process = await start_cli("run", str(config), "--no-progress", env=env)
        stdout, stderr = await asyncio.wait_for(process.communicate(), GUARD_S)
    err = stderr.decode()
    assert process.returncode == 1, err
    assert f"cannot connect to NATS at nats://service:***@127.0.0.1:{server.port}" in err
    assert "Authorization Violation" in err
    _assert_no_secret(stdout.decode() + err)
