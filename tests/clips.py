"""Small H.264 clips that tests and benchmarks write for themselves: flat frames whose shade steps
each frame, cheap to decode many times over on two cores."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def flat_clip(
    path: Path,
    *,
    frames: int,
    rate: int,
    width: int = 96,
    height: int = 64,
    gop: int | None = None,
    **open_options: str,
) -> Path:
    """``frames`` frames at ``rate`` frames/s in the container ``path`` names (``format`` in
    ``open_options`` for a raw one); a keyframe every ``gop`` frames if given (x264's choice if not)."""
    options = {"g": str(gop), "keyint_min": str(gop)} if gop else {}
    with av.open(str(path), "w", **open_options) as container:
        stream = container.add_stream("libx264", rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(frames):
            picture = np.full((height, width, 3), (index * 5) % 255, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
