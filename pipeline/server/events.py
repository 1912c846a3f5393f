"""``GET /streams/{id}/results``: a stream's results and events as they are published on NATS, as
server-sent events (``event: result`` / ``event: event``, ``data:`` the JSON message); the
response ends after the stream's ``ended`` event, or when the client leaves.

A stream that does not run is a 404 (with its error, if it failed recently), unless it starts
within ``?wait_s=`` seconds (default 0, at most ``MAX_WAIT_S``). The relay subscribes on NATS
before it looks, so a client that asks with ``wait_s`` and then starts the stream (the
``/publish`` page: it subscribes, then sends its WHIP offer) gets every message from the
stream's first, ``started``; subscribing after the offer would lose what the stream published
in between, and answering 200 for any id would leave a client of a stream that never comes
hanging forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..control import StreamNotFound
from ..results import events_subject, result_subject
from .errors import HttpError

if TYPE_CHECKING:
    from ..bus import Bus
    from ..control import StreamOperations
    from ..runner import Runner

SSE_QUEUE = 256
"""Messages a slow SSE client may have waiting; more drop the oldest (the page shows the latest)."""
SSE_POLL_S = 1.0
"""How often an idle SSE response checks that its client is still there."""
SSE_HEARTBEAT_S = 15.0
MAX_WAIT_S = 60.0
"""The longest ``wait_s`` a client may ask for: a bounded wait, never a hang."""
APPEAR_POLL_S = 0.05
"""How often a relay waiting for its stream looks whether it runs now."""


def add_routes(app: web.Application, runner: Runner, bus: Bus | None) -> None:
    async def results(request: web.Request) -> web.StreamResponse:
        return await _results_events(request, runner, bus)

    app.router.add_get("/streams/{id}/results", results)


def wait_seconds(request: web.Request) -> float:
    """``?wait_s=``: how long to wait for the stream to start; 400 unless 0..``MAX_WAIT_S``."""
    given = request.query.get("wait_s", "0")
    try:
        wait_s = float(given)
    except ValueError:
        wait_s = math.nan
    if not 0 <= wait_s <= MAX_WAIT_S:  # NaN too
        raise HttpError(400, f"wait_s: expected seconds from 0 to {MAX_WAIT_S:g}, got {given[:40]!r}")
    return wait_s


async def _results_events(request: web.Request, runner: Runner, bus: Bus | None) -> web.StreamResponse:
    stream_id = request.match_info["id"]
    control = runner.control
    control.check_id(stream_id)  # 400 for what is not a stream id
    wait_s = wait_seconds(request)
    if bus is None:
        raise HttpError(503, "this pipeline has no NATS connection to relay results from")
    pipeline = runner.graph.pipeline
    messages: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(SSE_QUEUE)
    arrived = asyncio.Event()

    def relay(kind: str) -> Any:
        async def on_message(msg: Any) -> None:
            if messages.full():  # a slow client: keep the newest
                messages.get_nowait()
            messages.put_nowait((kind, msg.data))
            arrived.set()

        return on_message

    subscriptions = [
        await bus.client.subscribe(result_subject(bus.prefix, pipeline, stream_id), cb=relay("result")),
        await bus.client.subscribe(events_subject(bus.prefix, pipeline, stream_id), cb=relay("event")),
    ]
    try:
        # Its messages count as much as the control's word: a stream may start and end (fail)
        # between two looks.
        if not await _appeared(control, stream_id, arrived, wait_s):
            failure = control.failure(stream_id)
            why = f"; it failed: {failure}" if failure is not None else ""
            waited = f" (waited {wait_s:g} s for it to start)" if wait_s else ""
            raise StreamNotFound(f"no stream {stream_id!r}{why}{waited}")
        return await _relay(request, stream_id, messages)
    finally:
        for subscription in subscriptions:
            await subscription.unsubscribe()


async def _appeared(control: StreamOperations, stream_id: str, arrived: asyncio.Event, wait_s: float) -> bool:
    """Whether the stream runs, or has published, now or within ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while not (arrived.is_set() or control.is_running(stream_id)):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        with contextlib.suppress(TimeoutError):  # no message yet: look at the control again
            await asyncio.wait_for(arrived.wait(), min(APPEAR_POLL_S, left))
    return True


async def _relay(
    request: web.Request, stream_id: str, messages: asyncio.Queue[tuple[str, bytes]]
) -> web.StreamResponse:
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
    return response
