"""NV12 (what NVDEC outputs) to BGR: with numpy on the host, with CuPy on the device.

NV12 is a full-resolution luma plane followed by one half-resolution plane of interleaved U, V.
Video is limited range (luma 16-235); the matrix is BT.601 unless asked otherwise, as FFmpeg's
conversion of an untagged frame (the CPU decode path) takes it. With numpy it is the reference,
tested against FFmpeg's own conversion on the CPU; with CuPy one kernel (``NV12_SOURCE``) reads
the NV12 surface and writes BGR, computing the same float32 arithmetic to the bit, with no float
temporaries.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from pipeline.gpuprep import launch

# R, G, B from (Y - 16), (U - 128), (V - 128), limited range.
_MATRICES = {
    "bt601": ((1.16438, 0.0, 1.59603), (1.16438, -0.39176, -0.81297), (1.16438, 2.01723, 0.0)),
    "bt709": ((1.16438, 0.0, 1.79274), (1.16438, -0.21325, -0.53291), (1.16438, 2.11240, 0.0)),
}


def nv12_to_bgr(nv12: Any, height: int, width: int, matrix: str = "bt601", xp: Any = np) -> Any:
    """A ``(height * 3 // 2) x width`` NV12 uint8 array -> ``height x width x 3`` BGR uint8, with
    ``xp`` numpy (the reference) or CuPy (one kernel; the result is complete when returned)."""
    if matrix not in _MATRICES:
        raise ValueError(f"matrix: expected one of {sorted(_MATRICES)}, got {matrix!r}")
    if xp is not np:
        return _nv12_to_bgr_on_device(nv12, height, width, matrix)
    luma = nv12[:height].astype(np.float32) - 16.0
    chroma = nv12[height : height + height // 2].reshape(height // 2, width // 2, 2).astype(np.float32) - 128.0
    # Each chroma sample covers its 2x2 luma block, as FFmpeg's default conversion (what the CPU
    # decode path uses) takes it: the two then agree to about 49 dB PSNR.
    chroma = np.repeat(np.repeat(chroma, 2, axis=0), 2, axis=1)
    u, v = chroma[..., 0], chroma[..., 1]
    bgr = np.empty((height, width, 3), dtype=np.uint8)
    for channel, (ky, ku, kv) in zip((2, 1, 0), _MATRICES[matrix], strict=True):  # R, G, B rows
        value = luma * ky + u * ku + v * kv
        bgr[..., channel] = np.clip(np.rint(value), 0, 255).astype(np.uint8)
    return bgr


NV12_SOURCE = r"""
// Each product and sum rounded to float32 on its own, as numpy computes luma*ky + u*ku + v*kv:
// the _rn intrinsics are never fused into a multiply-add (one rounding, a different last bit).
__device__ __forceinline__ unsigned char level(float y, float u, float v, float ky, float ku, float kv)
{
    float value = __fadd_rn(__fadd_rn(__fmul_rn(y, ky), __fmul_rn(u, ku)), __fmul_rn(v, kv));
    return (unsigned char)fminf(fmaxf(rintf(value), 0.0f), 255.0f);  // rintf: half to even, as numpy
}

// One thread per pixel. The luma plane is `height` rows of `pitch` bytes; the chroma plane
// follows it, height / 2 rows of interleaved U, V, each pair covering a 2x2 block of luma.
extern "C" __global__ void nv12_to_bgr(
    const unsigned char* __restrict__ nv12, long long pitch, int height, int width,
    unsigned char* __restrict__ bgr,
    float ry, float ru, float rv, float gy, float gu, float gv, float by, float bu, float bv)
{
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (index >= (long long)height * width) return;
    int y = (int)(index / width), x = (int)(index % width);
    float luma = (float)nv12[y * pitch + x] - 16.0f;
    const unsigned char* chroma = nv12 + (height + y / 2) * pitch + (x / 2) * 2;
    float u = (float)chroma[0] - 128.0f, v = (float)chroma[1] - 128.0f;
    unsigned char* out = bgr + index * 3;
    out[0] = level(luma, u, v, by, bu, bv);
    out[1] = level(luma, u, v, gy, gu, gv);
    out[2] = level(luma, u, v, ry, ru, rv);
}
"""


@lru_cache(maxsize=1)
def _nv12_kernel() -> Any:
    """Built on first use, so importing this module never imports CuPy."""
    import cupy

    return cupy.RawKernel(NV12_SOURCE, "nv12_to_bgr")


def _nv12_to_bgr_on_device(nv12: Any, height: int, width: int, matrix: str) -> Any:
    """``nv12_to_bgr`` with CuPy: one launch (two if the surface must be made row-contiguous)."""
    import cupy

    if not isinstance(nv12, cupy.ndarray):  # a decoder's surface (viewed), or host memory (uploaded)
        nv12 = cupy.asarray(nv12)
    if nv12.dtype != np.uint8 or nv12.ndim != 2 or nv12.shape[0] < height * 3 // 2 or nv12.shape[1] < width:
        raise ValueError(f"expected a ({height * 3 // 2}, {width}) uint8 NV12 array, got {nv12.shape} {nv12.dtype}")
    if nv12.strides[1] != 1:  # the kernel steps rows by the pitch (a decoder's surface has one), bytes densely
        nv12 = cupy.ascontiguousarray(nv12)
    bgr = cupy.empty((height, width, 3), dtype=np.uint8)
    coefficients = (np.float32(k) for row in _MATRICES[matrix] for k in row)  # R, G, B rows
    launch(
        _nv12_kernel(),
        height * width,
        (nv12, np.int64(nv12.strides[0]), np.int32(height), np.int32(width), bgr, *coefficients),
    )
    # A device array leaves a stage complete: the frame's consumers (prepare, ONNX Runtime) may
    # read it on another stream, which nothing orders after this one, so wait here (in the
    # decoding thread) until it is written.
    cupy.cuda.get_current_stream().synchronize()
    return bgr
