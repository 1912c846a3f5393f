"""``GET /streams/{id}/results``: a stream's results and events as they are published on NATS, as
server-sent events (``event: result`` / ``event: event``, ``data:`` the JSON message); the
response ends after the stream's ``ended`` event, or when the client leaves."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..results import events_subject, result_subject
from .errors import HttpError

if TYPE_CHECKING:
    from ..bus import Bus
    from ..runner import Runner

SSE_QUEUE = 256
"""Messages a slow SSE client may have waiting; more drop the oldest (the page shows the latest)."""
SSE_POLL_S = 1.0
"""How often an idle SSE response checks that its client is still there."""
SSE_HEARTBEAT_S = 15.0


def add_routes(app: web.Application, runner: Runner, bus: Bus | None) -> None:
    async def results(request: web.Request) -> web.StreamResponse:
        return await _results_events(request, runner, bus)

    app.router.add_get("/streams/{id}/results", results)


async def _results_events(request: web.Request, runner: Runner, bus: Bus | None) -> web.StreamResponse:
    stream_id = request.match_info["id"]
    runner.control.parse({"id": stream_id, "uri": "-"})  # the usual id rules (400 otherwise)
    if bus is None:
        raise HttpError(503, "this pipeline has no NATS connection to relay results from")
    pipeline = runner.graph.pipeline
    messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(SSE_QUEUE)

    def relay(kind: str) -> Any:
        async def on_message(msg: Any) -> None:
            if messages.full():  # a slow client: keep the newest
                messages.get_nowait()
            messages.put_nowait((kind, msg.data))

        return on_message

    subscriptions = [
        await bus.client.subscribe(result_subject(bus.prefix, pipeline, stream_id), cb=relay("result")),
        await bus.client.subscribe(events_subject(bus.prefix, pipeline, stream_id), cb=relay("event")),
    ]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    try:
        await response.prepare(request)
        await response.write(b": relaying " + stream_id.encode() + b"\n\n")
        idle = 0.0
        while request.transport is not None and not request.transport.is_closing():
            try:
                kind, data = await asyncio.wait_for(messages.get(), SSE_POLL_S)
            except TimeoutError:
                idle += SSE_POLL_S
                if idle >= SSE_HEARTBEAT_S:
                    idle = 0.0
                    await response.write(b": heartbeat\n\n")
                continue
            idle = 0.0
            await response.write(f"event: {kind}\ndata: ".encode() + data + b"\n\n")
            if kind == "event" and json.loads(data).get("event") == "ended":
                break
    except ConnectionError:
        pass  # the client left
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()
    return response
