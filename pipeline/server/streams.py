"""``GET|POST /streams`` and ``GET|DELETE /streams/{id}``: the runner's ``StreamControl`` over HTTP.

``POST`` takes a ``StreamSpec`` as JSON (``Content-Type: application/json``, else a 415) and
answers ``201 Created`` with the stream as ``GET`` lists it (``Location: /streams/{id}``); what
can be checked at once (the id, the options, that a file exists) is refused with a 4xx that says
why. ``GET`` lists running streams and those that failed recently (``state: failed`` with their
``error``); ``DELETE`` answers once the stream has ended, or forgets a failed one. An id that is
not a stream id (``pipeline.config.STREAM_ID_PATTERN``)
is a 400 on every route.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..control import loads_request
from .errors import HttpError

if TYPE_CHECKING:
    from ..runner import Runner


def add_routes(app: web.Application, runner: Runner) -> None:
    async def list_streams(request: web.Request) -> web.Response:
        return web.json_response({"streams": runner.control.list()})

    async def add_stream(request: web.Request) -> web.Response:
        control = runner.control
        spec = control.parse(await read_json(request))
        await control.add(spec)
        stream = control.describe(spec.id)
        return web.json_response(stream, status=201, headers={"Location": f"/streams/{spec.id}"})

    async def get_stream(request: web.Request) -> web.Response:
        return web.json_response(runner.control.describe(request.match_info["id"]))

    async def remove_stream(request: web.Request) -> web.Response:
        stream_id = request.match_info["id"]
        await runner.control.remove(stream_id)
        return web.json_response({"id": stream_id, "removed": True})

    app.router.add_get("/streams", list_streams)
    app.router.add_post("/streams", add_stream)
    app.router.add_get("/streams/{id}", get_stream)
    app.router.add_delete("/streams/{id}", remove_stream)


JSON = "application/json"


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; ``BadStreamRequest`` (400) that says why when it is not (or
    nests too deeply: ``pipeline.control.loads_request``, as over NATS), a 415
    unless it is ``Content-Type: application/json``: a web page of another site can send
    ``text/plain`` without the browser asking first, never ``application/json``."""
    if request.content_type != JSON:
        raise HttpError(415, f"the body is Content-Type: {JSON}, got {request.content_type!r}")
    return loads_request(await request.read())
