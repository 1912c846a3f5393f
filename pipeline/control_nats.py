"""The stream operations over NATS request/reply: ``<prefix>.control.streams.add|remove|list``.

Requests and replies are JSON. ``add`` takes what ``POST /streams`` takes; ``remove`` takes
``{"id": ...}``; ``list`` takes nothing. A reply is ``{"ok": true, ...}`` or
``{"ok": false, "status": <the HTTP status>, "error": "..."}``: the status ``POST /streams`` would
answer, from the one table both use (``pipeline.control.REPLY_STATUS``; this module never imports
the server). A request may name
``"pipeline"`` (a string, else a 400): only that pipeline answers (several pipelines can share one
prefix).

With a token (the config's ``api.token``), every request must carry it: ``"token": "<token>"`` in
the JSON object (compared in constant time); without it, or with another, the reply is
``{"ok": false, "status": 401}``. The token is checked after ``"pipeline"``: another pipeline's
request is not this one's to refuse.

As over HTTP, ``add`` refuses at once what can be checked (a bad id, an unknown option, a file
that does not exist), and ``list`` shows streams that failed later as ``state: failed`` with
their ``error`` for a while.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

from .control import (
    BadStreamRequest,
    StreamControlError,
    loads_request,
    reply_status,
)

if TYPE_CHECKING:
    from .bus import Bus
    from .runner import Runner

log = logging.getLogger("streamgraph.control")

OPERATIONS = ("add", "remove", "list")
ENVELOPE = ("pipeline", "token")
"""Keys of a request that say who it is for and who sends it, not what to do: removed before the
operation sees the body."""


def control_subject(prefix: str, operation: str) -> str:
    return f"{prefix}.control.streams.{operation}"


class NatsControl:
    """Answers stream operations for one running pipeline until ``close``."""

    def __init__(self, bus: Bus, runner: Runner, *, token: str = "", queue: str = "") -> None:
        """``queue``: a NATS queue group, so that of the workers of one cluster exactly one
        answers each request (any of them can: they share the catalog)."""
        self._bus = bus
        self._runner = runner
        self._token = token
        self._queue = queue
        self._subscriptions: list[Any] = []

    async def start(self) -> None:
        for operation in OPERATIONS:
            subject = control_subject(self._bus.prefix, operation)
            subscription = await self._bus.client.subscribe(subject, queue=self._queue, cb=self._on_request)
            self._subscriptions.append(subscription)
        await self._bus.client.flush()

    async def close(self) -> None:
        for subscription in self._subscriptions:
            try:
                await subscription.unsubscribe()
            except Exception as exc:  # the connection may be gone already: nothing left to undo
                log.debug("unsubscribe: %s", exc)
        self._subscriptions.clear()

    async def _on_request(self, msg: Any) -> None:
        operation = msg.subject.rsplit(".", 1)[-1]
        try:
            body = loads_request(msg.data) if msg.data.strip() else {}
        except BadStreamRequest as exc:
            await self._reply(msg, {"ok": False, "status": reply_status(exc), "error": exc.message})
            return
        pipeline = body.get("pipeline", self._runner.graph.pipeline) if isinstance(body, dict) else None
        if isinstance(body, dict) and not isinstance(pipeline, str):
            why = f"pipeline: expected the name of a pipeline (a string), got {_json_type(pipeline)}"
            await self._reply(msg, {"ok": False, "status": 400, "error": why})
            return
        if pipeline is not None and pipeline != self._runner.graph.pipeline:
            return  # another pipeline's request
        if not self._authorized(body):
            why = 'missing or wrong token: with api.token set, a control request carries "token": "<token>"'
            await self._reply(msg, {"ok": False, "status": 401, "error": why})
            return
        try:
            reply = await self._handle(operation, body)
        except StreamControlError as exc:
            reply = {"ok": False, "status": reply_status(exc), "error": exc.message}
        except Exception:
            log.exception("control request %s failed", msg.subject)
            reply = {"ok": False, "status": 500, "error": "internal error (logged by the server)"}
        await self._reply(msg, reply)

    async def _handle(self, operation: str, body: Any) -> dict[str, Any]:
        control = self._runner.control
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k not in ENVELOPE}
        if operation == "list":
            return {"ok": True, "streams": control.list()}
        if operation == "add":
            spec = control.parse(body)
            await control.add(spec)
            return {"ok": True, "stream": control.describe(spec.id)}
        if not isinstance(body, dict) or not isinstance(body.get("id"), str) or set(body) != {"id"}:
            raise BadStreamRequest('remove takes {"id": "<stream id>"} and nothing else')
        await control.remove(body["id"])
        return {"ok": True, "id": body["id"], "removed": True}

    def _authorized(self, body: Any) -> bool:
        if not self._token:
            return True
        given = body.get("token") if isinstance(body, dict) else None
        return isinstance(given, str) and hmac.compare_digest(given.encode(), self._token.encode())

    async def _reply(self, msg: Any, reply: dict[str, Any]) -> None:
        if msg.reply:
            await self._bus.client.publish(msg.reply, json.dumps(reply).encode())


def _json_type(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words (``null``, ``number``...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "an object" if isinstance(value, dict) else "an array"
