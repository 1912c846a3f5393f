"""``mqtt``: results and events on an MQTT broker (aiomqtt, over paho-mqtt), with topics after
Frigate's where they map:

* ``<prefix>/<stream>/results``: every result message (JSON);
* ``<prefix>/events``: every event (JSON: object events, and the stream's lifecycle);
* ``<prefix>/<stream>/status``: the stream's last lifecycle event (``started``, ``connected``,
  ``ended``...), retained, so a client that subscribes later learns where each stream is;
* ``<prefix>/<stream>/<label>``: how many objects of that label the stream's latest frame has,
  sent when it changes (Frigate's ``frigate/<camera>/<object>``);
* ``<prefix>/available``: ``online`` (retained) once connected, ``offline`` when we close or,
  through the broker's last will, when the connection dies.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import aiomqtt

from .base import Sink, SinkDown, SinkMessage
from .config import MqttSinkConfig

LIFECYCLE = frozenset({"started", "connecting", "connected", "stalled", "reconnecting", "error", "ended"})
"""Events that say where a stream is (``<stream>/status``); the rest are what it saw."""
_NOT_IN_TOPIC_LEVEL = re.compile(r"[/+#\x00]")


class MqttSink(Sink):
    kind = "mqtt"

    def __init__(self, name: str, config: MqttSinkConfig) -> None:
        super().__init__(name, max_pending=config.max_pending, max_batch=64)
        self.config = config
        parts = urlsplit(config.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.tls = parts.scheme == "mqtts"
        self.prefix = config.prefix.rstrip("/")
        self._client: aiomqtt.Client | None = None
        self._counts: dict[str, Counter[str]] = {}  # stream -> label -> objects on its latest frame
        self._planned: tuple[list[SinkMessage], list[tuple[str, bytes, bool]]] | None = None
        """The batch being delivered and its publishes not yet sent."""

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    async def connect(self) -> None:
        if self._client is not None:
            return
        import ssl

        available = f"{self.prefix}/available"
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.config.username,
            password=self.config.password or None,
            identifier=self.config.client_id,
            keepalive=self.config.keepalive_s,
            will=aiomqtt.Will(available, b"offline", qos=1, retain=True),
            tls_context=ssl.create_default_context() if self.tls else None,
            timeout=10,
        )
        try:
            await client.__aenter__()
            await client.publish(available, b"online", qos=1, retain=True)
        except aiomqtt.MqttError as exc:
            await _quietly_close(client)
            raise SinkDown(f"MQTT broker {self.where}: {exc}") from exc
        self._client = client

    async def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(f"{self.prefix}/available", b"offline", qos=1, retain=True, timeout=2)
            await _quietly_close(client)

    async def deliver(self, batch: list[SinkMessage]) -> None:
        # A batch tried again is the same list: its publishes are planned once, so the count
        # changes it carries (which update ``_counts``) are sent, not found unchanged the second time.
        if self._planned is None or self._planned[0] is not batch:
            self._planned = (batch, [publish for message in batch for publish in self.topics(message)])
        publishes = self._planned[1]
        await self.connect()
        assert self._client is not None
        try:
            while publishes:
                topic, payload, retain = publishes[0]
                await self._client.publish(topic, payload, qos=self.config.qos, retain=retain, timeout=10)
                publishes.pop(0)  # sent: a retry goes on from the next
            self._planned = None
        except aiomqtt.MqttError as exc:
            client, self._client = self._client, None
            await _quietly_close(client)
            raise SinkDown(f"MQTT broker {self.where}: {exc}") from exc

    def topics(self, message: SinkMessage) -> list[tuple[str, bytes, bool]]:
        """(topic, payload, retain) for each publish one message makes."""
        stream = f"{self.prefix}/{message.stream_id}"
        if message.kind == "event":
            found = [(f"{self.prefix}/events", message.payload, False)] if self.config.events else []
            event = message.body.get("event")
            if isinstance(event, str) and event in LIFECYCLE:
                found.append((f"{stream}/status", event.encode(), True))
                if event == "ended":
                    self._counts.pop(message.stream_id, None)
            return found
        found = [(f"{stream}/results", message.payload, False)] if self.config.results else []
        if self.config.counts:
            found += [(f"{stream}/{_level(label)}", str(n).encode(), False) for label, n in self._changed(message)]
        return found

    def _changed(self, message: SinkMessage) -> list[tuple[str, int]]:
        now = object_counts(message.body.get("results", {}))
        before = self._counts.get(message.stream_id, Counter())
        self._counts[message.stream_id] = now
        return [(label, now[label]) for label in sorted(set(now) | set(before)) if now[label] != before[label]]


def object_counts(results: dict[str, Any]) -> Counter[str]:
    """Objects per label on a frame: every labelled entry of every ``objects`` list in its results."""
    counts: Counter[str] = Counter()
    for result in results.values():
        objects = result.get("objects") if isinstance(result, dict) else None
        if isinstance(objects, list):
            counts.update(o["label"] for o in objects if isinstance(o, dict) and isinstance(o.get("label"), str))
    return counts


def _level(label: str) -> str:
    """A label as one topic level: no ``/``, ``+`` or ``#`` in it."""
    return _NOT_IN_TOPIC_LEVEL.sub("_", label) or "_"


async def _quietly_close(client: aiomqtt.Client | None) -> None:
    if client is None:
        return
    with contextlib.suppress(Exception):
        await client.__aexit__(None, None, None)
