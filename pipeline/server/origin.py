"""Cross-site requests: a web page the operator opens must not change streams on a loopback API.

A browser sends ``Origin`` with every cross-origin request and with every same-origin one that is
not a ``GET``/``HEAD``; a page of another site cannot leave it out or forge it. So a
state-changing request (any method but ``GET``, ``HEAD``, ``OPTIONS``) whose ``Origin`` is not
this API's own origin is a 403, whatever token it carries. Clients that are not browsers (curl,
scripts) send no ``Origin`` and are not affected; the ``/publish`` page, served by the API itself,
is same-origin.

The API's own origin is the scheme and ``Host`` the request came with; behind a reverse proxy,
``X-Forwarded-Proto`` and ``X-Forwarded-Host`` (the first value of each) say them. A page of
another site cannot set those headers on a request the browser sends without asking first (a
CORS preflight, which this API never grants), so honouring them lets no cross-site request
through. The JSON-only bodies (``streams.read_json``: 415 otherwise) close the other door: a
``text/plain`` form post.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware
from yarl import URL

from .errors import Handler, error_response

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing: no origin check (``/publish``, ``/metrics``, SSE)."""


def same_origin_only() -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and request.method not in SAFE_METHODS:
            own = own_origin(request)
            given = origin_key(origin)
            if given is None or given != origin_key(own):
                shown = origin if len(origin) <= 100 else origin[:97] + "..."
                return error_response(
                    403, f"cross-origin request refused: Origin {shown!r} is not this API's origin {own!r}"
                )
        return await handler(request)

    return check


def own_origin(request: web.Request) -> str:
    """``scheme://host[:port]`` this request was sent to, as the client (or its proxy) saw it."""
    scheme = _first(request.headers.get("X-Forwarded-Proto")) or request.scheme
    host = _first(request.headers.get("X-Forwarded-Host")) or request.host
    return f"{scheme}://{host}"


def origin_key(origin: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` with the scheme's default port filled in; None for an origin
    that is no URL (``null``, from a sandboxed page or a file), which matches nothing."""
    try:
        url = URL(origin)
        if not url.scheme or not url.host:
            return None
        return url.scheme.lower(), url.host.lower().rstrip("."), url.port
    except ValueError:
        return None


def _first(header: str | None) -> str:
    return header.split(",", 1)[0].strip() if header else ""
