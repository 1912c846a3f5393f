"""Test doubles that more than one test module uses.

* ``EmitRecorder``: the ``emit`` a test hands to ``Source.run``; it keeps every message in order.
* ``CountingSink``: a last stage that counts what reaches it as published (``publish`` without a
  bus); a config names it ``class: tests.fakes:CountingSink``.
* ``FakeClock``: a clock that stands still until the test moves it.
* ``ScriptedTransport``: an inference server's client whose answers a test scripts (a unit test
  of ``RemoteEngine`` and of ``infer`` with it; real servers are tests/remote's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pipeline.engines.remote.transport import ServerModel, Transport
from pipeline.media import EncodedPacket, EndOfStream, Item, Message
from pipeline.stage import Stage, StageParams


class EmitRecorder:
    """An ``emit`` that records every message, and can call ``then()`` to stop the source midway.

    ``then()`` runs once the ``after``-th packet has arrived, or after any message when
    ``until(messages so far)`` says so (pass one of the two). ``packet_arrived`` is set by the
    first packet.
    """

    def __init__(
        self,
        after: int | None = None,
        then: Callable[[], None] | None = None,
        *,
        until: Callable[[list[Message]], bool] | None = None,
    ) -> None:
        self.messages: list[Message] = []
        self._after = after
        self._then = then
        self._until = until
        self.packet_arrived = asyncio.Event()

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)
        if isinstance(message, Item):
            self.packet_arrived.set()
            if self._after is not None and len(self.items) == self._after and self._then is not None:
                self._then()
        if self._until is not None and self._until(self.messages) and self._then is not None:
            self._then()

    @property
    def items(self) -> list[Item]:
        return [m for m in self.messages if isinstance(m, Item)]

    @property
    def ends(self) -> list[EndOfStream]:
        return [m for m in self.messages if isinstance(m, EndOfStream)]

    @property
    def packets(self) -> list[EncodedPacket]:
        packets = []
        for item in self.items:
            assert isinstance(item.media, EncodedPacket)
            packets.append(item.media)
        return packets


class CountingSinkParams(StageParams):
    keep: bool = False
    """Also keep every item it counted, in ``items`` (off: a long run of frames would pile up)."""


class CountingSink(Stage):
    """Counts what reaches it as published (what ``publish`` does, without a bus), and consumes it."""

    Params = CountingSinkParams
    params: CountingSinkParams

    def __init__(self, name: str, params: CountingSinkParams) -> None:
        super().__init__(name, params)
        self.items: list[Item] = []

    async def process(self, item: Item) -> Sequence[Item]:
        self.ctx.stats.stream(item.stream_id).published += 1
        if self.params.keep:
            self.items.append(item)
        return ()


class FakeClock:
    """A clock that stands still until the test sets or adds to ``now``; call it for the time (it
    stands in for ``time.time`` or a ``clock=`` argument)."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ScriptedTransport(Transport):
    """Answers ``infer`` from ``script`` (an exception to raise, or None for a right answer: zeros
    of the PP-OCRv4 det output's shape), then rightly; ``wait_ready`` from ``ready_script``.
    With ``gate`` set, each request waits for it: ``most_in_flight`` counts them at once."""

    def __init__(self, server: Any, model: ServerModel, script: list[Exception | None] | None = None) -> None:
        super().__init__(server)
        self.model = model
        self.script = list(script or [])
        self.ready_script: list[Exception | None] = []
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.in_flight = 0
        self.most_in_flight = 0

    @property
    def protocol(self) -> str:
        return "scripted"

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def wait_ready(self) -> None:
        if self.ready_script and (error := self.ready_script.pop(0)) is not None:
            raise error

    async def describe(self) -> ServerModel:
        return self.model

    async def infer(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.script and (error := self.script.pop(0)) is not None:
                raise error
        finally:
            self.in_flight -= 1
        x = feeds["x"]
        return {"sigmoid_0.tmp_0": np.zeros((x.shape[0], 1, *x.shape[2:]), np.float32)}
