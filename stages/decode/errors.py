"""What the video and audio decoders share: opening FFmpeg's decoder for a stream, how many bad
packets in a row a stream survives, and how a decoder's error is worded for a person."""

from __future__ import annotations

from typing import Any

import av
from av.codec.codec import UnknownCodecError

from pipeline.errors import StreamError
from pipeline.stage import StageContext


def open_decoder(stream_id: str, codec: str, track: str) -> Any:
    """FFmpeg's decoder for ``codec``; a ``StreamError`` naming it if this FFmpeg has none (a
    camera or a demuxer may announce any codec): that stream ends, the others go on."""
    try:
        return av.CodecContext.create(codec, "r")
    except UnknownCodecError:
        raise StreamError(stream_id, f"no FFmpeg decoder for {track} codec {codec!r}") from None


def count_decode_error(ctx: StageContext, stream_id: str, in_row: int, limit: int, track: str, exc: Exception) -> int:
    """Count one packet that failed to decode; return the new run length.

    The packet is counted as dropped. A run of ``limit`` failures means the media is broken,
    not glitched: a ``StreamError`` ends that stream (the others go on).
    """
    in_row += 1
    ctx.stats.stream(stream_id).packets_dropped += 1
    if in_row >= limit:
        raise StreamError(stream_id, f"corrupt {track}: {in_row} packets in a row failed to decode ({reason(exc)})")
    ctx.logger.warning("stream %s: %s packet failed to decode: %s", stream_id, track, reason(exc))
    return in_row


def reason(exc: Exception) -> str:
    """What a decoder says went wrong, for an event a person reads: FFmpeg's own words
    (``Invalid data found when processing input``), without its errno and the C function."""
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__
