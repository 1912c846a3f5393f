"""WebRTC ingest over WHIP: ``POST /whip/{stream_id}`` and the ``/publish`` page (placeholder)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .runner import Runner


def add_routes(app: web.Application, runner: Runner) -> None:
    """Nothing yet: WHIP lands in its own change."""
