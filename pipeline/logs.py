"""Logs on stderr: readable lines for people, or one JSON object per line for log shippers.

``--log-level`` is the level of streamgraph's own loggers (``streamgraph.*``). Third-party
libraries (aiortc, aioice, aiohttp, nats...) are shown from WARNING up (from ERROR at ``ERROR``),
and in full only at DEBUG: their INFO lines (ICE candidate pairs, each WHIP session's STUN
checks) say nothing an operator can act on and flood the console.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Literal

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
    """``HH:MM:SS LEVEL logger: message``, and the traceback below when there is one; passwords
    in URLs masked (``mask_secrets``)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return mask_secrets(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC, ms), ``level``, ``logger``, ``message``,
    and ``exception`` (the formatted traceback) when the record carries one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
        }
        if record.exc_info:
            entry["exception"] = mask_secrets(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = mask_secrets(record.exc_text)
        if record.stack_info:
            entry["stack"] = mask_secrets(self.formatStack(record.stack_info))
        # One line whatever the message holds: json.dumps escapes newlines inside strings.
        return json.dumps(entry, ensure_ascii=False)


_PASSWORD_IN_URL = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:)[^\s/?#]*@")
"""``scheme://user:password@``: the password runs to the last ``@`` before the path, as in
``urlsplit`` (a password may hold an ``@``)."""
_TOKEN_IN_NATS_URL = re.compile(r"(\b(?:nats|tls|ws|wss)://)[^\s:/?#@]+@")
"""``nats://token@``: to NATS (and nats-py) a user name without a password is a token."""
MASK = "***"


def redact(url: str) -> str:
    """The URL without its password (``rtsp://user:***@host/path``), or without its token when it
    is a NATS URL with a user name alone (``nats://***@host:4222``), which NATS reads as a token."""
    return mask_secrets(url)


def mask_secrets(text: str) -> str:
    """``text`` with the password of every URL in it masked (``redact``): what a log line, an
    event or an error may show of a URL. A password that holds ``/``, ``?``, ``#`` or a space is
    percent-encoded in a valid URL, and then masked too."""
    if "://" not in text:
        return text
    masked = _PASSWORD_IN_URL.sub(rf"\1{MASK}@", text)
    return _TOKEN_IN_NATS_URL.sub(rf"\1{MASK}@", masked)
