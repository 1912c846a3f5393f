"""Prepare on the device in one CuPy launch: BGR uint8 -> resized, normalized float32 tensor.

The CPU prepare resizes with OpenCV's ``INTER_LINEAR_EXACT`` and then normalizes channel by
channel; done the same way with CuPy that is some twenty launches per frame, each with a float or
uint32 temporary the size of the image, plus uploads of the resize taps. Here one kernel
(``prepare_tensor``) reads the 2x2 source pixels of each output pixel, blends them with the same
fixed-point arithmetic (8 fraction bits across, then 8 down, rounded half up), orders the
channels and normalizes as ``prepare_image`` does, with each float product and sum rounded on its
own, so the tensor equals the CPU's to the bit. The taps (which source rows and columns each
output pixel blends, and their weights) depend only on the sizes: they are computed and uploaded
once per size and device (``taps_for``), and the kernel takes them as arguments.

``prepare_reference`` is the kernel's arithmetic written with numpy, over the same taps and the
same ``PreparePlan``: the unit tests hold it to OpenCV's pixels and the CPU prepare's tensor on
machines without a GPU. Nothing here imports CuPy until a device array is prepared.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

FRACTION_BITS = 8
"""OpenCV's bit-exact linear resize of uint8 weighs pixels in fixed point with 8 fraction bits."""

THREADS_PER_BLOCK = 256


@lru_cache(maxsize=64)
def linear_taps(source: int, target: int) -> np.ndarray:
    """A ``4 x target`` uint32 table, read-only: for each target index, the two source indices it
    blends (low, high) and their weights in fixed point (summing to 1 << 8), as OpenCV's
    ``INTER_LINEAR_EXACT`` takes them: pixel centres aligned, edge pixels repeated."""
    one = 1 << FRACTION_BITS
    position = (np.arange(target, dtype=np.float64) + 0.5) * (source / target) - 0.5
    first = np.floor(position)
    high_weight = np.clip(np.rint((position - first) * one), 0, one).astype(np.int64)
    # Before the first pixel and from the last one on, the edge pixel is repeated.
    clamped = (first < 0) | (first + 1 >= source)
    high_weight[clamped] = 0
    low = np.clip(first, 0, source - 1).astype(np.int64)
    high = np.where(clamped, low, low + 1)
    table = np.stack([low, high, one - high_weight, high_weight]).astype(np.uint32)
    table.flags.writeable = False  # shared by every caller through the cache
    return table


@lru_cache(maxsize=64)
def _taps_on(source: int, target: int, module: str, device: int) -> Any:
    """``linear_taps`` as an array of ``module``, on ``device`` (-1: the host). Cached, so a stream of
    same-size frames uploads nothing: callers only read it (CuPy has no read-only flag)."""
    table = linear_taps(source, target)
    if module == "numpy":
        return table
    xp = importlib.import_module(module)
    uploaded = xp.asarray(table)
    # Uploaded on this call's stream, read later from whichever stream prepares: complete it now.
    xp.cuda.get_current_stream().synchronize()
    return uploaded


def taps_for(source: int, target: int, xp: Any) -> Any:
    """``linear_taps`` in ``xp`` (numpy, or CuPy on its current device), uploaded once per size."""
    device = -1 if xp is np else int(xp.cuda.runtime.getDevice())
    return _taps_on(source, target, xp.__name__, device)


taps_cache_info = _taps_on.cache_info
"""Hits and misses of the taps cache: a test's way to see that frames upload no taps."""


@dataclass(frozen=True, slots=True)
class PreparePlan:
    """Everything the prepare kernel needs besides the pixels; it depends on sizes and the card
    only, so it is the same for every frame of a stream."""

    source: tuple[int, int]
    """(height, width) of the BGR image."""
    size: tuple[int, int]
    """(height, width) of the tensor."""
    inner: tuple[int, int]
    """(height, width) of the picture in it: ``size`` when stretched, less when letterboxed."""
    pad: tuple[int, int]
    """(top, left) of the picture in the tensor; around it the zero pixel, normalized."""
    rgb: bool
    """Tensor channel c is source channel 2 - c (else c)."""
    nchw: bool
    gain: tuple[float, float, float]
    """Per tensor channel, float32 values: ``value = level * gain + bias``."""
    bias: tuple[float, float, float]


def prepare_reference(image: np.ndarray, plan: PreparePlan) -> np.ndarray:
    """What ``prepare_tensor`` computes, with numpy: the same taps, the same integer blend, the
    same float32 multiply then add. Kept beside the kernel so the two change together."""
    top, bottom, top_weight, bottom_weight = linear_taps(plan.source[0], plan.inner[0])
    left, right, left_weight, right_weight = linear_taps(plan.source[1], plan.inner[1])
    pixels = image.astype(np.uint32)

    def across(rows: np.ndarray) -> np.ndarray:  # rows blended across columns: 16-bit values
        picked = pixels[rows]
        blended: np.ndarray = picked[:, left] * left_weight[:, None] + picked[:, right] * right_weight[:, None]
        return blended

    half = 1 << (2 * FRACTION_BITS - 1)
    blended = across(top) * top_weight[:, None, None] + across(bottom) * bottom_weight[:, None, None]
    levels = np.zeros((*plan.size, 3), dtype=np.uint32)  # the padding: zero pixels
    pad_top, pad_left = plan.pad
    levels[pad_top : pad_top + plan.inner[0], pad_left : pad_left + plan.inner[1]] = (blended + half) >> (
        2 * FRACTION_BITS
    )
    height, width = plan.size
    tensor = np.empty((3, height, width) if plan.nchw else (height, width, 3), dtype=np.float32)
    for channel in range(3):
        level = levels[..., 2 - channel if plan.rgb else channel].astype(np.float32)
        value = level * np.float32(plan.gain[channel]) + np.float32(plan.bias[channel])
        if plan.nchw:
            tensor[channel] = value
        else:
            tensor[..., channel] = value
    return tensor


PREPARE_SOURCE = (
    f"#define FRACTION_BITS {FRACTION_BITS}\n"
    + r"""
// One thread per output pixel, all three channels. rows and cols are 4 x n uint32 tables
// (linear_taps): low index, high index, low weight, high weight.
extern "C" __global__ void prepare_tensor(
    const unsigned char* __restrict__ image, long long pitch,  // BGR, rows `pitch` bytes apart
    const unsigned int* __restrict__ rows, const unsigned int* __restrict__ cols,
    int inner_height, int inner_width, int pad_top, int pad_left,
    float* __restrict__ tensor, int height, int width, int nchw, int rgb,
    float gain0, float gain1, float gain2, float bias0, float bias1, float bias2)
{
    long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long pixels = (long long)height * width;
    if (index >= pixels) return;
    int y = (int)(index / width), x = (int)(index % width);
    int inner_y = y - pad_top, inner_x = x - pad_left;
    bool inside = inner_y >= 0 && inner_y < inner_height && inner_x >= 0 && inner_x < inner_width;

    unsigned int levels[3] = {0u, 0u, 0u};  // outside the picture: the zero pixel (letterbox)
    if (inside) {
        const unsigned char* top = image + (long long)rows[inner_y] * pitch;
        const unsigned char* bottom = image + (long long)rows[inner_height + inner_y] * pitch;
        unsigned int top_weight = rows[2 * inner_height + inner_y];
        unsigned int bottom_weight = rows[3 * inner_height + inner_y];
        unsigned int left = cols[inner_x] * 3, right = cols[inner_width + inner_x] * 3;
        unsigned int left_weight = cols[2 * inner_width + inner_x];
        unsigned int right_weight = cols[3 * inner_width + inner_x];
        for (int c = 0; c < 3; ++c) {
            // Across first (a 16-bit value per row), then down: OpenCV's INTER_LINEAR_EXACT.
            unsigned int upper = top[left + c] * left_weight + top[right + c] * right_weight;
            unsigned int lower = bottom[left + c] * left_weight + bottom[right + c] * right_weight;
            unsigned int half = 1u << (2 * FRACTION_BITS - 1);  // rounds half up
            levels[c] = (upper * top_weight + lower * bottom_weight + half) >> (2 * FRACTION_BITS);
        }
    }

    const float gain[3] = {gain0, gain1, gain2};
    const float bias[3] = {bias0, bias1, bias2};
    for (int c = 0; c < 3; ++c) {
        float level = (float)levels[rgb ? 2 - c : c];
        // Multiply, round, add, round: the CPU prepare's two numpy steps. The _rn intrinsics are
        // never fused into one multiply-add (which rounds once and would differ in the last bit).
        float value = __fadd_rn(__fmul_rn(level, gain[c]), bias[c]);
        long long at = nchw ? c * pixels + index : index * 3 + c;
        tensor[at] = value;
    }
}
"""
)


@lru_cache(maxsize=1)
def _prepare_kernel() -> Any:
    """Built on first use (NVRTC compiles it then, and CuPy caches the binary on disk)."""
    import cupy

    return cupy.RawKernel(PREPARE_SOURCE, "prepare_tensor")


def launch(kernel: Any, threads: int, args: tuple[Any, ...]) -> None:
    """``kernel`` over ``threads`` threads in 1-D blocks, on the current CuPy stream."""
    if threads:
        blocks = (threads + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
        kernel((blocks,), (THREADS_PER_BLOCK,), args)


def prepare_on_device(image: Any, plan: PreparePlan) -> Any:
    """A CuPy BGR uint8 ``image`` -> the plan's float32 tensor on the same device, in one launch
    (two if ``image`` has to be made row-contiguous first), complete when returned."""
    import cupy

    if not isinstance(image, cupy.ndarray):  # another library's device array: viewed, not copied
        image = cupy.asarray(image)
    if image.dtype != np.uint8 or image.shape != (*plan.source, 3):
        raise ValueError(f"expected a {(*plan.source, 3)} uint8 image, got {image.shape} {image.dtype}")
    if image.strides[1:] != (3, 1):  # the kernel steps rows by a pitch, pixels and channels densely
        image = cupy.ascontiguousarray(image)
    rows = taps_for(plan.source[0], plan.inner[0], cupy)
    cols = taps_for(plan.source[1], plan.inner[1], cupy)
    height, width = plan.size
    tensor = cupy.empty((3, height, width) if plan.nchw else (height, width, 3), dtype=np.float32)
    i32, f32 = np.int32, np.float32
    args = (
        image,
        np.int64(image.strides[0]),
        rows,
        cols,
        *(i32(n) for n in (*plan.inner, *plan.pad)),
        tensor,
        i32(height),
        i32(width),
        i32(plan.nchw),
        i32(plan.rgb),
        *(f32(g) for g in plan.gain),
        *(f32(b) for b in plan.bias),
    )
    launch(_prepare_kernel(), height * width, args)
    # A device array leaves a stage complete: ONNX Runtime reads this tensor on its own stream,
    # which nothing orders after this one, so wait here (in the worker thread) until it is written.
    cupy.cuda.get_current_stream().synchronize()
    return tensor
