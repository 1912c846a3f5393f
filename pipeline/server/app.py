"""The application: every route, the middlewares, and ``ApiServer`` that listens.

Routes: ``GET /healthz`` (the process is alive), ``GET /readyz`` (bus connected, models loaded,
not stopping, every stage ready: a model whose server is down is not, and ``not_ready`` says
why), the stream routes (``streams``), ``GET /metrics`` (``metrics``), the WHIP routes
and ``/publish`` (``whip``), and ``GET /streams/{id}/results`` (``events``).

Middlewares, outermost first: every error as JSON (``errors``), cross-origin browser requests
refused on state-changing routes (``origin``), the bearer token (``auth``).
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING

from aiohttp import web

from ..errors import PipelineError
from . import events, metrics, streams, whep, whip
from .auth import bearer_token
from .errors import errors_as_json
from .origin import same_origin_only

if TYPE_CHECKING:
    from ..bus import Bus
    from ..runner import Runner

log = logging.getLogger("streamgraph.api")

RUNNER: web.AppKey[Runner] = web.AppKey("runner")
BUS: web.AppKey[Bus | None] = web.AppKey("bus")
MAX_BODY_BYTES = 1 << 20


def build_app(runner: Runner, *, bus: Bus | None = None, token: str = "") -> web.Application:
    middlewares = [errors_as_json, same_origin_only(), bearer_token(token)]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app[RUNNER] = runner
    app[BUS] = bus
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    streams.add_routes(app, runner)
    metrics.add_routes(app, runner)
    whip.add_routes(app, runner)
    whep.add_routes(app, runner)
    events.add_routes(app, runner, bus)
    return app


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
    not_ready = runner.not_ready() if runner.started.is_set() else {}
    checks["stages_ready"] = not not_ready
    ready = all(checks.values())
    body: dict[str, object] = {"ready": ready, "checks": checks}
    if not_ready:
        body["not_ready"] = not_ready
    return web.json_response(body, status=200 if ready else 503)


class ApiServer:
    """The app on ``host:port``; ``port`` is the bound one (useful with port 0). With an
    ``ssl_context`` (``api.tls_cert`` and ``api.tls_key``) it serves HTTPS only."""

    def __init__(
        self, app: web.Application, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self._host = host
        self._port = port
        self._ssl_context = ssl_context
        self.port = port

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self._host}:{self.port}"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl_context)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise PipelineError(f"api.listen: cannot listen on {self._host}:{self._port}: {exc.strerror}") from None
        addresses = self._runner.addresses  # each bound socket's getsockname(): (host, port, ...)
        if addresses:
            self.port = addresses[0][1]
        log.info("control plane on %s", self.url)

    async def stop(self) -> None:
        await self._runner.cleanup()
