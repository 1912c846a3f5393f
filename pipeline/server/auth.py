"""The bearer token: with one configured, every route but ``OPEN_ROUTES`` and ``OPEN_PAGES`` needs
``Authorization: Bearer <token>`` (the scheme in any case, as RFC 9110 says of auth schemes; the
token compared in constant time); without one, nothing is checked."""

from __future__ import annotations

import hmac
import re

from aiohttp import web
from aiohttp.typedefs import Middleware

from .errors import Handler, error_response

OPEN_ROUTES = frozenset({"/healthz", "/readyz", "/publish"})
"""Health and readiness: Kubernetes' probes send no token, and the answers hold nothing secret.
The publish page holds no data; its own requests carry the token."""
OPEN_PAGES = re.compile(r"^/streams/[^/]+/view$")
"""A stream's viewing page, open as ``/publish`` is: it holds no data, its WHEP request carries the token."""


def bearer_token(token: str) -> Middleware:
    expected = token.encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token and request.path not in OPEN_ROUTES and not OPEN_PAGES.match(request.path):
            given = given_bearer(request.headers.get("Authorization", ""))
            if given is None or not hmac.compare_digest(given.encode(), expected):
                response = error_response(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
                response.headers["WWW-Authenticate"] = 'Bearer realm="streamgraph"'
                return response
        return await handler(request)

    return check


def given_bearer(authorization: str) -> str | None:
    """The token of ``Bearer <token>`` (``bearer``, ``BEARER``... too); None for another scheme."""
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip(" ")
