"""How a source says why media could not be read: FFmpeg's or the OS's own words, without the noise."""

from __future__ import annotations

import av


def media_error(exc: BaseException) -> str:
    """The reason ``exc`` gives: FFmpeg's ``strerror`` (``No such file or directory``), the OS's, or
    the message."""
    if isinstance(exc, av.FFmpegError):
        return exc.strerror or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
