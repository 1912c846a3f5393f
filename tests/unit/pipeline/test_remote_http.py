"""HttpSession, the HTTP transports' connection pool, against a local aiohttp server: requests go
over kept-alive connections, at most ``max_in_flight`` of them, not one connection per request,
and ask for no compression; failures are sorted into the transport errors."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pipeline.engines.remote.http import HttpSession
from pipeline.engines.remote.options import ServerOptions
from pipeline.engines.remote.transport import Rejected, TransferCounts, Unavailable


async def test_requests_share_at_most_max_in_flight_kept_alive_connections() -> None:
    peers: set[object] = set()
    encodings: set[str | None] = set()

    async def echo(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        encodings.add(request.headers.get("Accept-Encoding"))
        await asyncio.sleep(0.01)  # so concurrent requests overlap
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_post("/infer", echo)
    async with TestServer(app, host="127.0.0.1") as server:
        options = ServerOptions(url=f"http://127.0.0.1:{server.port}", model="m", max_in_flight=2)
        counts = TransferCounts()
        session = HttpSession(options, counts)
        await session.open()
        try:
            for _ in range(5):
                await session.post("/infer", b"x" * 100, content_type="application/octet-stream")
            await asyncio.gather(
                *(session.post("/infer", b"y", content_type="application/octet-stream") for _ in range(8))
            )
        finally:
            await session.close()
    assert 1 <= len(peers) <= 2  # 13 requests, two connections at most
    assert encodings == {None}  # answers not gzipped: float tensors hardly shrink, and it costs both ends
    assert (counts.requests, counts.sent, counts.received) == (13, 508, 508)


async def test_statuses_are_sorted_into_the_transport_errors() -> None:
    async def answer(request: web.Request) -> web.Response:
        status = int(request.match_info["status"])
        return web.json_response({"error": f"status {status}"}, status=status)

    app = web.Application()
    app.router.add_get("/{status}", answer)
    async with TestServer(app, host="127.0.0.1") as server:
        session = HttpSession(ServerOptions(url=f"http://127.0.0.1:{server.port}", model="m"), TransferCounts())
        await session.open()
        try:
            with pytest.raises(Unavailable, match="HTTP 503: status 503"):
                await session.get("/503")
            with pytest.raises(Rejected, match="HTTP 400: status 400"):
                await session.get("/400")
            assert (await session.get("/404", allow=(404,))).status == 404
        finally:
            await session.close()
