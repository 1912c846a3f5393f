"""WHIP signalling (WebRTC ingest) and the ``/publish`` page.

* ``POST /whip/{stream_id}`` (``Content-Type: application/sdp``, the body an SDP offer) adds the
  stream ``{stream_id}`` with URI ``whip:`` to the pipeline's ``streams`` source and answers
  ``201 Created`` with the SDP answer and ``Location: /whip/{stream_id}/{session}``. Query
  ``?tracks=video,audio`` asks for the peer's audio too (default: video only). A duplicate id is a
  409, a pipeline without a ``streams`` source a 409, an offer that cannot be answered a 400.
* ``DELETE /whip/{stream_id}/{session}`` ends the stream (``stopped``) and answers 200 once it
  has ended; an unknown session is a 404.
* ``GET /publish`` a page that publishes the browser's camera and microphone over WHIP and shows
  the stream's results (``?stream=<id>&autostart=1`` starts it without a click).

The peer connection itself is the ``whip`` source stage's (aiortc, no HTTP): the source a WHIP
stream gets must be an ``SdpAnswerer``, whose ``answer`` raises ``ValueError`` (with the reason)
for an offer it cannot answer.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from aiohttp import web

from ..control import FAILED
from .errors import HttpError

if TYPE_CHECKING:
    from ..runner import Runner

SDP = "application/sdp"
PUBLISH_PAGE = Path(__file__).resolve().parent / "static" / "publish.html"
TRACK_KINDS = ("video", "audio")


@runtime_checkable
class SdpAnswerer(Protocol):
    """A source that negotiates its media over WebRTC (WHIP): takes an SDP offer, gives the answer."""

    async def answer(self, offer_sdp: str) -> str: ...


def add_routes(app: web.Application, runner: Runner) -> None:
    whip = _Whip(runner)
    app.router.add_post("/whip/{stream_id}", whip.offer)
    app.router.add_delete("/whip/{stream_id}/{session}", whip.delete)
    app.router.add_get("/publish", _publish_page)


class _Whip:
    def __init__(self, runner: Runner) -> None:
        self._runner = runner
        self._sessions: dict[str, str] = {}
        """stream id -> its WHIP session: ``DELETE`` must name the current one."""

    async def offer(self, request: web.Request) -> web.Response:
        offer = await read_offer(request, "WHIP")
        stream_id = request.match_info["stream_id"]
        control = self._runner.local_control  # a publisher's stream runs where it connects
        spec = control.parse({"id": stream_id, "uri": "whip:", "options": {"tracks": _tracks(request)}})
        source = await control.add(spec)
        if not isinstance(source, SdpAnswerer):
            await control.remove(spec.id)
            raise HttpError(500, f"the source for {spec.uri!r} streams does not answer SDP offers")
        try:
            answer = await source.answer(offer)
        except ValueError as exc:
            await control.remove(spec.id)
            raise HttpError(400, str(exc)) from None
        except BaseException:
            await control.remove(spec.id)
            raise
        session = secrets.token_urlsafe(12)
        running = {s["id"] for s in control.list() if s["state"] != FAILED}  # forget ended streams' sessions
        self._sessions = {sid: known for sid, known in self._sessions.items() if sid in running}
        self._sessions[stream_id] = session
        location = f"/whip/{stream_id}/{session}"
        return web.Response(status=201, text=answer, content_type=SDP, headers={"Location": location})

    async def delete(self, request: web.Request) -> web.Response:
        stream_id, session = request.match_info["stream_id"], request.match_info["session"]
        if self._sessions.get(stream_id) != session:
            raise HttpError(404, f"no WHIP session {session!r} for stream {stream_id!r}")
        del self._sessions[stream_id]
        streams = self._runner.local_control.list()
        if not any(s["id"] == stream_id and s["type"] == "whip" and s["state"] != FAILED for s in streams):
            raise HttpError(404, f"WHIP session {session!r}: stream {stream_id!r} has ended already")
        await self._runner.local_control.remove(stream_id)
        return web.json_response({"id": stream_id, "removed": True})


async def read_offer(request: web.Request, protocol: str) -> str:
    """The SDP offer a WHIP or WHEP ``POST`` carries; a 415 or 400 saying what is wrong with it."""
    if request.content_type != SDP:
        raise HttpError(415, f"a {protocol} offer is Content-Type: {SDP}, got {request.content_type!r}")
    try:
        offer = (await request.read()).decode()
    except UnicodeDecodeError as exc:
        raise HttpError(400, f"the body is not UTF-8 text: expected an SDP offer ({exc.reason})") from None
    if not offer.strip():
        raise HttpError(400, "the body is empty: expected an SDP offer")
    return offer


def _tracks(request: web.Request) -> list[str]:
    given = request.query.get("tracks", "video")
    tracks = [t.strip() for t in given.split(",") if t.strip()]
    unknown = [t for t in tracks if t not in TRACK_KINDS]
    if unknown or not tracks:
        raise HttpError(400, f"tracks: expected a comma-separated list of {', '.join(TRACK_KINDS)}, got {given!r}")
    return tracks


async def _publish_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(PUBLISH_PAGE, headers={"Content-Type": "text/html; charset=utf-8"})
