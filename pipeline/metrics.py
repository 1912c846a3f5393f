"""``GET /metrics``: the pipeline's counters and histograms in Prometheus format (placeholder)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .runner import Runner


def add_routes(app: web.Application, runner: Runner) -> None:
    """Nothing yet: the metrics land in their own change."""
