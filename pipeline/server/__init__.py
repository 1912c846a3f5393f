"""Everything that speaks HTTP (aiohttp's server side), on top of the runtime and never under it.

* ``app``: ``build_app`` (every route, the middlewares), ``/healthz``, ``/readyz``, and
  ``ApiServer``, which listens and tells the bound port;
* ``errors``: the one table from the runtime's typed errors to status codes, ``HttpError`` for
  what only HTTP gets wrong, and every error as JSON ``{"error": "..."}``;
* ``origin``: cross-origin browser requests refused on state-changing routes (403);
* ``auth``: the bearer token (every route but ``/healthz``, ``/readyz`` and ``/publish``);
* ``streams``: ``GET|POST /streams``, ``GET|DELETE /streams/{id}`` (``pipeline.control``);
* ``metrics``: ``GET /metrics`` (the runner's ``pipeline.metrics``);
* ``whip``: WHIP signalling (``POST /whip/{id}``, ``DELETE /whip/{id}/{session}``), the
  ``SdpAnswerer`` protocol a WHIP source implements, and the ``/publish`` page (``static/``);
* ``events``: ``GET /streams/{id}/results``, a stream's results as server-sent events (a 404 for
  a stream that does not run, or does not start within ``?wait_s=``).

The runtime (the rest of ``pipeline``) never imports this package; ``pipeline.service`` starts
the server when a config has an ``api`` section.
"""

from .app import ApiServer, build_app

__all__ = ["ApiServer", "build_app"]
