"""Logs on stderr: readable lines for people, or one JSON object per line for log shippers.

``--log-level`` is the level of streamgraph's own loggers (``streamgraph.*``). Third-party
libraries (aiortc, aioice, aiohttp, nats...) are shown from WARNING up (from ERROR at ``ERROR``),
and in full only at DEBUG: their INFO lines (ICE candidate pairs, each WHIP session's STUN
checks) say nothing an operator can act on and flood the console.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

OWN_LOGGER = "streamgraph"
"""Every logger of the runtime and the stages is a child of this one."""

QUIETER: dict[str, int] = {"libav": logging.ERROR}
"""Third-party loggers kept quieter than WARNING (but for DEBUG): FFmpeg warns about every
recoverable glitch of a stream, which the decoder already counts."""


def setup_logging(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Point the root logger at stderr in ``fmt``: our loggers at ``level``, others at WARNING."""
    if level not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    debug = level == "DEBUG"
    if not debug:
        # On the handler, not as levels of the third-party loggers: nothing but the root's level
        # and handler changes, so a test (or an embedding program) can put them back.
        handler.addFilter(third_party_at_warning)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name, quieter in QUIETER.items():
        logging.getLogger(name).setLevel(logging.NOTSET if debug else quieter)


def third_party_at_warning(record: logging.LogRecord) -> bool:
    """A handler filter: our records at any level, another library's from WARNING up."""
    return record.levelno >= logging.WARNING or record.name == OWN_LOGGER or record.name.startswith(f"{OWN_LOGGER}.")


class TextFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL logger: message``, and the traceback below when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC, ms), ``level``, ``logger``, ``message``,
    and ``exception`` (the formatted traceback) when the record carries one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # One line whatever the message holds: json.dumps escapes newlines inside strings.
        return json.dumps(entry, ensure_ascii=False)


def redact(url: str) -> str:
    """The URL without its password (``rtsp://user:***@host/path``)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
