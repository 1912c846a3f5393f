"""pipeline.server.errors: the one table from the runtime's typed errors to HTTP statuses, and every
error of a route as JSON ``{"error": ...}``; the NATS control's table says the same."""

from __future__ import annotations

import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pipeline.control import (
    REPLY_STATUS,
    BadStreamRequest,
    NoStreamHost,
    StreamControlError,
    StreamExists,
    StreamHostUnavailable,
    StreamLimitReached,
    StreamNotFound,
    reply_status,
)
from pipeline.server.errors import HttpError, errors_as_json

from ..pipeline.test_control import control_errors

EXPECTED = {
    BadStreamRequest: 400,
    StreamNotFound: 404,
    StreamExists: 409,
    NoStreamHost: 409,
    StreamLimitReached: 409,
    StreamHostUnavailable: 503,
}


def test_the_table() -> None:
    assert {error: reply_status(error("x")) for error in EXPECTED} == EXPECTED
    runtime_errors = {e for e in control_errors() if e.__module__ == "pipeline.control"}
    assert runtime_errors <= set(REPLY_STATUS), f"errors without a status: {runtime_errors - set(REPLY_STATUS)}"
    assert reply_status(StreamControlError("x")) == 400


def test_nats_replies_and_the_server_use_the_one_table() -> None:
    import pipeline.control_nats
    import pipeline.server.errors

    for module in (pipeline.control_nats, pipeline.server.errors):
        assert module.reply_status is reply_status


async def _client(raise_: BaseException) -> TestClient[web.Request, web.Application]:
    async def handler(request: web.Request) -> web.Response:
        raise raise_

    app = web.Application(middlewares=[errors_as_json])
    app.router.add_get("/x", handler)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


class NotListed(StreamLimitReached):
    """A subclass the table does not list: it answers its nearest listed base's status."""


@pytest.mark.parametrize(
    ("exc", "status", "message"),
    [
        *((error("why"), status, "why") for error, status in EXPECTED.items()),
        (NotListed("full"), 409, "full"),
        (HttpError(415, "a WHIP offer is Content-Type: application/sdp"), 415, None),
        (web.HTTPNotFound(), 404, "Not Found"),
        (RuntimeError("a bug"), 500, "internal error (logged by the server)"),
    ],
)
async def test_errors_are_json_with_their_status(
    exc: BaseException, status: int, message: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    client = await _client(exc)
    try:
        with caplog.at_level(logging.ERROR, "streamgraph.api"):
            response = await client.get("/x")
        assert response.status == status
        body = await response.json()
        assert body == {"error": message if message is not None else str(exc)}
        assert ("GET /x failed" in caplog.text) == (status == 500)
    finally:
        await client.close()


async def test_the_routers_own_refusals_say_what_is_there() -> None:
    client = await _client(RuntimeError("not reached"))
    try:
        response = await client.get("/nowhere/../x%2F..")
        assert response.status == 404
        assert (await response.json())["error"].startswith("no route GET /")
        response = await client.put("/x")
        assert response.status == 405
        assert await response.json() == {"error": "PUT is not allowed on /x; allowed: GET, HEAD"}
        assert response.headers["Allow"]  # kept, as HTTP asks
    finally:
        await client.close()


async def test_a_body_over_the_limit_says_the_limit() -> None:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        raise AssertionError("read a body over the limit")

    app = web.Application(middlewares=[errors_as_json], client_max_size=1024)
    app.router.add_post("/x", handler)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        response = await client.post("/x", data=b"x" * 4096)
        assert response.status == 413
        assert "Maximum request body size 1024 exceeded" in (await response.json())["error"]
    finally:
        await client.close()
