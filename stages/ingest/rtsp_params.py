"""What an ``rtsp`` source is configured with: its parameters, and the stream id its URL gives."""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from pipeline.config import STREAM_ID_PATTERN, stream_id_from
from pipeline.stage import TrackSelection
from pipeline.urls import url_problem

RTSP_SCHEMES = ("rtsp", "rtsps")
_PASSWORD = re.compile(r"^([^:/?#]+://[^:/?#@]*:)[^/?#@]*@")


class RtspParams(TrackSelection):
    url: str
    """``rtsp://[user:password@]host[:port]/path``; the password never appears in events or logs."""
    id: str | None = Field(default=None, pattern=STREAM_ID_PATTERN)
    """Stream id; defaults to the URL's last path segment (or its host), each character a stream
    id cannot hold made ``_``."""
    transport: Literal["tcp", "udp"] = "tcp"
    """RTP over the RTSP TCP connection (interleaved), or over UDP."""
    open_timeout_s: float = Field(default=5.0, gt=0)
    """How long connecting (RTSP handshake and probing the stream) may take."""
    read_timeout_s: float = Field(default=5.0, gt=0)
    """How long FFmpeg waits in one read before giving up (ends a read the watchdog abandoned)."""
    stall_timeout_s: float = Field(default=5.0, gt=0)
    """No packet for this long: the stream is ``stalled`` and the source reconnects."""
    backoff_initial_s: float = Field(default=0.5, gt=0)
    """The first reconnect waits up to this long; each failed attempt in a row doubles it."""
    backoff_max_s: float = Field(default=10.0, gt=0)
    """The cap of the backoff; the actual wait is uniform in [0, cap] (full jitter)."""
    max_reconnects: int | None = Field(default=None, ge=0)
    """Reconnect attempts in a row (since the stream last delivered packets) before the stream
    ends with an error; null: forever."""

    @field_validator("url")
    @classmethod
    def _rtsp_url(cls, url: str) -> str:
        # Checked without its password, so that the error (shown, logged) does not hold it.
        problem = url_problem(_PASSWORD.sub(r"\1***@", url), RTSP_SCHEMES, "rtsp://[user:password@]host[:port]/path")
        if problem or any(c.isspace() for c in url):
            raise ValueError(problem or "expected a URL without spaces")
        return url

    @model_validator(mode="after")
    def _backoff_order(self) -> RtspParams:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s}) must be >= backoff_initial_s ({self.backoff_initial_s})"
            )
        return self


def stream_id_from_url(url: str) -> str:
    """A stream id from the URL: its last path segment, else its host, made subject-safe."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    raw = segments[-1] if segments else (parts.hostname or "")
    return stream_id_from(raw, "rtsp")
