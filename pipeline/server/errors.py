"""Errors as HTTP replies: the one table from the runtime's typed errors to status codes.

Every error reply is JSON ``{"error": "..."}`` with a 4xx status that says whose fault it is; a
500 means a bug of ours (logged here). The runtime raises typed errors (``pipeline.control``) and
never names a status; ``HttpError`` is for what only HTTP can get wrong (a content type, a
WHIP session, a query parameter).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..control import (
    StreamControlError,
    reply_status,
)
from ..errors import PipelineError

log = logging.getLogger("streamgraph.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(PipelineError):
    """A request the server refuses on HTTP grounds, with the status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StreamControlError as exc:
        return error_response(reply_status(exc), exc.message)
    except HttpError as exc:
        return error_response(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, _http_reason(request, exc))
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, "internal error (logged by the server)")


def _http_reason(request: web.Request, exc: web.HTTPException) -> str:
    """What aiohttp's own refusals mean for this request, in words: the route that is not there,
    the methods that are, the body size limit."""
    path = request.path if len(request.path) <= 80 else request.path[:77] + "..."
    if getattr(request.match_info, "http_exception", None) is exc:  # the router found no route
        if isinstance(exc, web.HTTPMethodNotAllowed):
            return f"{request.method} is not allowed on {path}; allowed: {', '.join(sorted(exc.allowed_methods))}"
        return f"no route {request.method} {path}"
    if exc.text and exc.text != f"{exc.status}: {exc.reason}":
        return exc.text  # aiohttp's own detail (the body size limit)
    return exc.reason
