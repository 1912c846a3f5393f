"""The HTTP control plane (aiohttp): streams, health, metrics, and WebRTC (WHIP) ingest.

Routes: ``GET /healthz`` (the process is alive), ``GET /readyz`` (bus connected, models loaded,
not stopping), ``GET|POST /streams``, ``DELETE /streams/{id}``, ``GET /metrics`` (Prometheus), and
the WHIP routes of ``pipeline.webrtc``. With a token, every route but ``/healthz`` and ``/publish`` needs
``Authorization: Bearer <token>``. Every error is JSON ``{"error": "..."}`` with a 4xx status that
says whose fault it is; a 500 means a bug of ours.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from . import metrics, webrtc
from .control import StreamControlError
from .errors import PipelineError

if TYPE_CHECKING:
    from .bus import Bus
    from .runner import Runner

log = logging.getLogger("streamgraph.api")

RUNNER: web.AppKey[Runner] = web.AppKey("runner")
BUS: web.AppKey[Bus | None] = web.AppKey("bus")
MAX_BODY_BYTES = 1 << 20
OPEN_ROUTES = frozenset({"/healthz", "/publish"})  # the page holds no data; its requests carry the token

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(runner: Runner, *, bus: Bus | None = None, token: str = "") -> web.Application:
    app = web.Application(middlewares=[_errors_as_json, _bearer_token(token)], client_max_size=MAX_BODY_BYTES)
    app[RUNNER] = runner
    app[BUS] = bus
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/streams", _list_streams)
    app.router.add_post("/streams", _add_stream)
    app.router.add_delete("/streams/{id}", _remove_stream)
    metrics.add_routes(app, runner)
    webrtc.add_routes(app, runner)
    return app


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def read_json(request: web.Request) -> Any:
    """The request body as JSON; a 400 that says why when it is not."""
    try:
        return await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StreamControlError(400, f"body is not valid JSON: {exc}") from None


@web.middleware
async def _errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StreamControlError as exc:
        return error_response(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal error (logged by the server)")


def _bearer_token(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token and request.path not in OPEN_ROUTES:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                response = error_response(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
                response.headers["WWW-Authenticate"] = 'Bearer realm="streamgraph"'
                return response
        return await handler(request)

    return check


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    runner = request.app[RUNNER]
    bus = request.app[BUS]
    checks = {
        "bus_connected": bus is not None and bus.connected,
        "models_loaded": runner.started.is_set(),
        "not_stopping": not runner.stopping,
    }
    ready = all(checks.values())
    return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)


async def _list_streams(request: web.Request) -> web.Response:
    return web.json_response({"streams": request.app[RUNNER].control.list()})


async def _add_stream(request: web.Request) -> web.Response:
    control = request.app[RUNNER].control
    spec = control.parse(await read_json(request))
    await control.add(spec)
    stream = control.describe(spec.id)
    return web.json_response(stream, status=201, headers={"Location": f"/streams/{spec.id}"})


async def _remove_stream(request: web.Request) -> web.Response:
    stream_id = request.match_info["id"]
    await request.app[RUNNER].control.remove(stream_id)
    return web.json_response({"id": stream_id, "removed": True})


class ApiServer:
    """The app on ``host:port``; ``port`` is the bound one (useful with port 0)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._host = host
        self._port = port
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise PipelineError(f"api.listen: cannot listen on {self._host}:{self._port}: {exc.strerror}") from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("control plane on %s", self.url)

    async def stop(self) -> None:
        await self._runner.cleanup()
