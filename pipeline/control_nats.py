"""The stream operations over NATS request/reply: ``<prefix>.control.streams.add|remove|list``.

Requests and replies are JSON. ``add`` takes what ``POST /streams`` takes; ``remove`` takes
``{"id": ...}``; ``list`` takes nothing. A reply is ``{"ok": true, ...}`` or
``{"ok": false, "status": <the HTTP status>, "error": "..."}``: the status ``POST /streams`` would
answer, from the one table both use (``pipeline.control.REPLY_STATUS``; this module never imports
the server). A request may name
``"pipeline"``: only that pipeline answers (several pipelines can share one prefix).

As over HTTP, ``add`` refuses at once what can be checked (a bad id, an unknown option, a file
that does not exist), and ``list`` shows streams that failed later as ``state: failed`` with
their ``error`` for a while.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from .control import (
    BadStreamRequest,
    StreamControlError,
    reply_status,
)

if TYPE_CHECKING:
    from .bus import Bus
    from .runner import Runner

log = logging.getLogger("streamgraph.control")

OPERATIONS = ("add", "remove", "list")


def control_subject(prefix: str, operation: str) -> str:
    return f"{prefix}.control.streams.{operation}"


class NatsControl:
    """Answers stream operations for one running pipeline until ``close``."""

    def __init__(self, bus: Bus, runner: Runner) -> None:
        self._bus = bus
        self._runner = runner
        self._subscriptions: list[Any] = []

    async def start(self) -> None:
        for operation in OPERATIONS:
            subject = control_subject(self._bus.prefix, operation)
            self._subscriptions.append(await self._bus.client.subscribe(subject, cb=self._on_request))
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
            body = json.loads(msg.data) if msg.data.strip() else {}
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            await self._reply(msg, {"ok": False, "status": 400, "error": f"body is not valid JSON: {why}"})
            return
        if isinstance(body, dict) and body.get("pipeline", self._runner.graph.pipeline) != self._runner.graph.pipeline:
            return  # another pipeline's request
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
            body = {k: v for k, v in body.items() if k != "pipeline"}
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

    async def _reply(self, msg: Any, reply: dict[str, Any]) -> None:
        if msg.reply:
            await self._bus.client.publish(msg.reply, json.dumps(reply).encode())
