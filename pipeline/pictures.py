"""What the stages that show video (``overlay``, ``mp4``, ``view``) hand each other: the
picture of a frame, annotated or not, and the scene geometry an ``object_events`` stage draws.

A stage that shows frames (a ``PictureConsumer``) says, per stream, whether it wants pictures
now (a recorder: always; a WHEP view: while someone watches). ``overlay`` asks the stages after
it and draws only when one does, so a frame nobody watches costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .media import Item, VideoFrame
from .tensors import to_host


@dataclass(frozen=True)
class Picture:
    """A frame's pixels to show: BGR uint8, height x width x 3 (``overlay``'s drawing, or the frame)."""

    image: np.ndarray


@dataclass(frozen=True)
class SceneGeometry:
    """An ``object_events`` stage's zones and lines (source pixels) with their counts now, for
    ``overlay`` to draw. On ``item.tensors[<that stage>]``."""

    zones: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    zone_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    lines: dict[str, tuple[tuple[float, float], tuple[float, float]]] = field(default_factory=dict)
    line_counts: dict[str, dict[str, int]] = field(default_factory=dict)


@runtime_checkable
class PictureConsumer(Protocol):
    """A stage that shows frames: whether it (or a stage after it) wants this stream's pictures now."""

    def wants_pictures(self, stream_id: str) -> bool: ...


@runtime_checkable
class ViewHost(Protocol):
    """A stage that sends pictures to viewers over WebRTC (``view``): what WHEP asks of it."""

    def shows(self, stream_id: str) -> bool: ...

    async def answer(self, stream_id: str, offer_sdp: str) -> tuple[str, str]: ...

    async def close_viewer(self, session: str) -> bool: ...


class NoViewerRoom(Exception):
    """A stream has as many viewers as its ``view`` stage takes (``max_viewers``)."""


def anyone_wants(consumers: Sequence[Any], stream_id: str) -> bool:
    """Whether a stage among ``consumers`` (a stage's ``ctx.consumers``) wants the stream's pictures."""
    return any(isinstance(c, PictureConsumer) and c.wants_pictures(stream_id) for c in consumers)


def picture_of(item: Item) -> np.ndarray | None:
    """The item's picture: the last ``overlay``'s drawing, else the frame's own pixels (None for
    audio). Blocking (a frame's first ``bgr()`` converts it): call it in the thread pool."""
    drawn = [t for t in item.tensors.values() if isinstance(t, Picture)]
    if drawn:
        return drawn[-1].image
    if isinstance(item.media, VideoFrame):
        return np.asarray(to_host(item.media.bgr()))
    return None
