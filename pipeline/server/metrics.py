"""``GET /metrics``: the runner's metrics (``pipeline.metrics``) in Prometheus text format, behind
the bearer token like every route but ``/healthz``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from ..runner import Runner


def add_routes(app: web.Application, runner: Runner) -> None:
    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=runner.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", serve)
