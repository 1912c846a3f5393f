"""Where results and events go besides NATS: the ``sinks:`` of a pipeline (``jsonl``, ``mqtt``,
``webhook``), each with its own bounded outbox and counts (``base.Sink``). ``publish`` hands
every message it builds to ``Sinks``, which offers it to each sink without waiting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .base import Sink, SinkDown, SinkMessage
from .config import JsonlSinkConfig, MqttSinkConfig, SinkConfig, WebhookSinkConfig

log = logging.getLogger("streamgraph.sinks")

__all__ = ["Sink", "SinkMessage", "Sinks", "build_sink"]


def build_sink(name: str, config: SinkConfig, base_dir: Path) -> Sink:
    """The sink a config entry describes (its libraries imported only when one is used)."""
    sink: Sink
    if isinstance(config, JsonlSinkConfig):
        from .jsonl import STDOUT, JsonlSink

        path = config.path if config.path == STDOUT else str(base_dir / Path(config.path).expanduser())
        sink = JsonlSink(name, path, max_pending=config.max_pending, max_bytes=config.max_bytes, keep=config.keep)
    elif isinstance(config, MqttSinkConfig):
        from .mqtt import MqttSink

        return MqttSink(name, config)  # it takes everything, and sorts out results and events itself
    elif isinstance(config, WebhookSinkConfig):
        from .webhook import WebhookSink

        sink = WebhookSink(name, config)
    else:  # pragma: no cover  (the config's union has no other member)
        raise AssertionError(config)
    sink.results, sink.events = config.results, config.events
    return sink


class Sinks:
    """Every sink of a run: started before the stages, offered each message, closed after them."""

    def __init__(self, sinks: Sequence[Sink] = ()) -> None:
        self.sinks = list(sinks)

    @classmethod
    def from_config(cls, configs: Sequence[SinkConfig], base_dir: Path) -> Sinks:
        names = _names(configs)
        return cls([build_sink(name, config, base_dir) for name, config in zip(names, configs, strict=True)])

    def __iter__(self) -> Iterator[Sink]:
        return iter(self.sinks)

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def result(self, stream_id: str, body: dict[str, Any], payload: bytes, frame: Any = None) -> None:
        message = SinkMessage("result", stream_id, body, payload)
        for sink in self.sinks:
            if sink.results:
                sink.offer(SinkMessage("result", stream_id, body, payload, frame) if sink.wants_frames else message)

    def event(self, stream_id: str, body: dict[str, Any], payload: bytes) -> None:
        message = SinkMessage("event", stream_id, body, payload)
        for sink in self.sinks:
            if sink.events:
                sink.offer(message)

    async def start(self) -> None:
        """Connect each sink and start its task. One that cannot connect yet is not fatal: its
        messages wait (bounded) while it tries again."""
        for sink in self.sinks:
            try:
                await sink.connect()
            except SinkDown as exc:
                log.warning("sink %s: not connected yet (%s); messages wait while it retries", sink.name, exc)
            await sink.start()
            log.info("sink %s: %s to %s", sink.name, sink.kind, sink.where)

    async def close(self, timeout_s: float) -> None:
        """Deliver what waits, all sinks at once, for up to ``timeout_s``."""
        await asyncio.gather(*(sink.close(timeout_s) for sink in self.sinks))
        for sink in self.sinks:
            if sink.dropped:
                drops = ", ".join(f"{why}: {n}" for why, n in sorted(sink.dropped.items()))
                total = sum(sink.dropped.values())
                log.warning("sink %s: %d sent, %d dropped (%s)", sink.name, sink.sent, total, drops)
            else:
                log.info("sink %s: %d sent, 0 dropped", sink.name, sink.sent)


def _names(configs: Sequence[SinkConfig]) -> list[str]:
    """Each sink's name: its own, or its type (``jsonl``, then ``jsonl-2``...); two alike are an error."""
    names: list[str] = []
    for index, config in enumerate(configs):
        name = config.name
        if name is None:
            name, number = config.type, 1
            while name in names:
                number += 1
                name = f"{config.type}-{number}"
        elif name in names:
            raise ConfigError(f"sinks[{index}].name", f"a second sink named {name!r}")
        names.append(name)
    return names
