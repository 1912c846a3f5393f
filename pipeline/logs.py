"""Readable, structured logs: time, level, component, message (with key=value details)."""

from __future__ import annotations

import logging
import sys
from urllib.parse import urlsplit, urlunsplit


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Quiet third-party chatter that says nothing a user can act on.
    logging.getLogger("nats").setLevel(logging.WARNING)
    logging.getLogger("libav").setLevel(logging.ERROR)


def redact(url: str) -> str:
    """The URL without its password (``rtsp://user:***@host/path``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
