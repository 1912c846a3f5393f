"""What the video and audio decoders share: how many bad packets in a row a stream survives."""

from __future__ import annotations

from pipeline.errors import StreamError
from pipeline.stage import StageContext


def count_decode_error(ctx: StageContext, stream_id: str, in_row: int, limit: int, track: str, exc: Exception) -> int:
    """Count one packet that failed to decode; return the new run length.

    The packet is counted as dropped. A run of ``limit`` failures means the media is broken,
    not glitched: a ``StreamError`` ends that stream (the others go on).
    """
    in_row += 1
    ctx.stats.stream(stream_id).packets_dropped += 1
    if in_row >= limit:
        raise StreamError(stream_id, f"corrupt {track}: {in_row} packets in a row failed to decode ({exc})")
    ctx.logger.warning("stream %s: %s packet failed to decode: %s", stream_id, track, exc)
    return in_row
