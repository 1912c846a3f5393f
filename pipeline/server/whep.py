"""WHEP signalling (WebRTC playback) and the viewing page.

* ``POST /whep/{stream_id}`` (``Content-Type: application/sdp``, the body an SDP offer that
  receives video) makes the browser a viewer of the stream's pictures from the pipeline's
  ``view`` stage and answers ``201 Created`` with the SDP answer and
  ``Location: /whep/{stream_id}/{session}``. A pipeline without a ``view`` stage is a 409, a
  stream it is not showing a 404, an offer it cannot answer a 400, a stream with ``max_viewers``
  viewers a 503.
* ``DELETE /whep/{stream_id}/{session}`` ends that viewer (200); an unknown one is a 404.
* ``GET /streams/{stream_id}/view`` a page that plays the stream over WHEP
  (``?token=<token>`` for a service with one; ``&autostart=0`` waits for a click).

The same token rules as every route hold for WHEP; the page holds no data (an open route, as
``/publish``): its own requests carry the token.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from ..pictures import NoViewerRoom, ViewHost
from .errors import HttpError
from .whip import SDP, read_offer

if TYPE_CHECKING:
    from ..runner import Runner

VIEW_PAGE = Path(__file__).resolve().parent / "static" / "view.html"


def add_routes(app: web.Application, runner: Runner) -> None:
    whep = _Whep(runner)
    app.router.add_post("/whep/{stream_id}", whep.offer)
    app.router.add_delete("/whep/{stream_id}/{session}", whep.delete)
    app.router.add_get("/streams/{stream_id}/view", _view_page)


class _Whep:
    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def _hosts(self) -> list[ViewHost]:
        return [node.stage for node in self._runner.graph.nodes.values() if isinstance(node.stage, ViewHost)]

    async def offer(self, request: web.Request) -> web.Response:
        offer = await read_offer(request, "WHEP")
        stream_id = request.match_info["stream_id"]
        hosts = self._hosts()
        if not hosts:
            raise HttpError(409, "this pipeline has no view stage: add one (type: view) to watch its streams")
        host = next((h for h in hosts if h.shows(stream_id)), None)
        if host is None:
            raise HttpError(404, f"stream {stream_id!r} is not running here (or has sent no frame yet)")
        try:
            session, answer = await host.answer(stream_id, offer)
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        except NoViewerRoom as exc:
            raise HttpError(503, str(exc)) from None
        location = f"/whep/{stream_id}/{session}"
        return web.Response(status=201, text=answer, content_type=SDP, headers={"Location": location})

    async def delete(self, request: web.Request) -> web.Response:
        stream_id, session = request.match_info["stream_id"], request.match_info["session"]
        for host in self._hosts():
            if await host.close_viewer(session):
                return web.json_response({"id": stream_id, "session": session, "closed": True})
        raise HttpError(404, f"no WHEP session {session!r} for stream {stream_id!r}")


async def _view_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(VIEW_PAGE, headers={"Content-Type": "text/html; charset=utf-8"})
