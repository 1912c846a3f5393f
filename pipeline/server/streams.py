"""``GET|POST /streams`` and ``GET|DELETE /streams/{id}``: the runner's ``StreamControl`` over HTTP.

``POST`` takes a ``StreamSpec`` as JSON and answers ``201 Created`` with the stream as ``GET``
lists it (``Location: /streams/{id}``); what can be checked at once (the id, the options, that a
file exists) is refused with a 4xx that says why. ``GET`` lists running streams and those that
failed recently (``state: failed`` with their ``error``); ``DELETE`` answers once the stream has
ended, or forgets a failed one. An id that is not a stream id (``pipeline.config.STREAM_ID_PATTERN``)
is a 400 on every route.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..control import BadStreamRequest

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


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; ``BadStreamRequest`` (400) that says why when it is not."""
    try:
        return await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadStreamRequest(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadStreamRequest("body is not valid JSON: nested too deeply") from None
