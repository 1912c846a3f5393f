"""The bearer token: with one configured, every route but ``OPEN_ROUTES`` needs
``Authorization: Bearer <token>`` (compared in constant time); without one, nothing is checked."""

from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Middleware

from .errors import Handler, error_response

OPEN_ROUTES = frozenset({"/healthz", "/readyz", "/publish"})
"""Health and readiness: Kubernetes' probes send no token, and the answers hold nothing secret.
The publish page holds no data; its own requests carry the token."""


def bearer_token(token: str) -> Middleware:
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
