"""The ``sinks:`` section of a pipeline YAML: where results and events go besides NATS.

```yaml
sinks:
  - {type: jsonl, path: results.jsonl, max_bytes: 100000000}
  - {type: mqtt, url: "mqtt://broker:1883", qos: 1}
  - {type: webhook, url: "https://example.com/hook", secret: "${env:HOOK_SECRET}"}
```
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from ..strict import StrictModel

_NAME = r"^[A-Za-z0-9_-]+$"


def _url_of(url: str, schemes: tuple[str, ...], expected: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"expected {expected}, got {url!r}")
    return url


class SinkCommon(StrictModel):
    name: str | None = Field(default=None, pattern=_NAME)
    """What logs and ``/metrics`` call it (default: its type, numbered when there are several)."""
    max_pending: int = Field(default=1000, ge=1)
    """Messages its outbox holds while it is slow or down; more drop the oldest (counted ``full``)."""
    results: bool = True
    """Send every result message."""
    events: bool = True
    """Send every stream event (``started``, ``ended``, object events...)."""


class JsonlSinkConfig(SinkCommon):
    """One JSON message per line, to a file or to stdout (``path: "-"``)."""

    type: Literal["jsonl"]
    path: str
    """A file (relative to the config file; appended to), or ``-`` for stdout."""
    max_bytes: int | None = Field(default=None, ge=1024)
    """Rotate when the file reaches this size: ``x.jsonl`` becomes ``x.jsonl.1`` (and ``.1``
    becomes ``.2``...), keeping ``keep`` old files. Default: never."""
    keep: int = Field(default=5, ge=1)


class MqttSinkConfig(SinkCommon):
    """An MQTT broker, with topics after Frigate's where they map."""

    type: Literal["mqtt"]
    url: str = "mqtt://127.0.0.1:1883"
    """``mqtt://host:port`` (``mqtts://`` for TLS)."""
    prefix: str = Field(default="streamgraph", pattern=r"^[^#+]+$")
    qos: Literal[0, 1] = 0
    counts: bool = True
    """``<prefix>/<stream>/<label>``: the number of objects of each label on the stream's latest
    frame, sent when it changes (Frigate's per-camera object counts)."""
    username: str | None = None
    password: str = Field(default="", repr=False)
    client_id: str | None = None
    keepalive_s: int = Field(default=30, ge=5)

    @field_validator("url")
    @classmethod
    def _mqtt_url(cls, url: str) -> str:
        return _url_of(url, ("mqtt", "mqtts"), "mqtt://host:port or mqtts://host:port")


class WebhookSinkConfig(SinkCommon):
    """HTTP POSTs of JSON arrays of messages, signed with HMAC-SHA256 when ``secret`` is set."""

    type: Literal["webhook"]
    url: str
    secret: str = Field(default="", repr=False)
    """Signs each body: header ``X-Streamgraph-Signature: sha256=<hex HMAC of the body>``."""
    max_batch: int = Field(default=50, ge=1, le=10000)
    """Messages per POST, at most."""
    batch_delay_ms: float = Field(default=500.0, ge=0)
    """How long a POST waits for more messages before it goes with fewer than ``max_batch``."""
    timeout_s: float = Field(default=10.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)
    """More headers on every POST (an ``Authorization``, say)."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        return _url_of(url, ("http", "https"), "an http:// or https:// URL")


SinkConfig = Annotated[JsonlSinkConfig | MqttSinkConfig | WebhookSinkConfig, Field(discriminator="type")]
