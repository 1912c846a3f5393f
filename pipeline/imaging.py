"""Images to model tensors as a model card's ``preprocess`` says: resize or letterbox, color order,
normalize, layout; on the host with OpenCV, on a GPU with one CuPy kernel (``pipeline.gpuprep``).

Both resize with the same fixed-point arithmetic (OpenCV's ``INTER_LINEAR_EXACT``), so a frame
prepared on the GPU gives the CPU's tensor to float rounding. Used by every stage that prepares
model inputs (``prepare``, ``text_crops``, and ``infer`` for the frames it is fed).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .errors import ConfigError
from .gpuprep import FRACTION_BITS, PreparePlan, linear_taps, prepare_on_device, taps_for
from .media import VideoFrame
from .modelcard import ModelCard, Preprocess
from .tensors import DeferredTensor, Geometry, PreparedTensor, array_module


def prepare_frame(frame: VideoFrame, size: tuple[int, int], resize: str, spec: Preprocess) -> PreparedTensor:
    """``prepare_image`` on a frame's pixels (converted here, in the thread pool, if need be)."""
    return prepare_image(frame.bgr(), size, resize, spec)


def prepare_image(image: Any, size: tuple[int, int], resize: str, spec: Preprocess) -> PreparedTensor:
    """BGR uint8 HxWx3 -> normalized float32 tensor of ``size`` (height, width) in the card's layout.

    A numpy image is resized by OpenCV (``INTER_LINEAR_EXACT``) and normalized here; a device
    array (``__cuda_array_interface__``: CuPy, a decoder's surface) is prepared on the device in
    one kernel (``pipeline.gpuprep``), and the tensor stays there, complete. Both compute the same
    fixed-point resize and the same float32 multiply-add, so the two give the same tensor.
    """
    xp = array_module(image)
    source_height, source_width = image.shape[:2]
    height, width = size
    geometry = fit_geometry(source_width, source_height, size, resize)
    if xp is not np:
        return PreparedTensor(
            prepare_on_device(image, prepare_plan(source_width, source_height, size, resize, spec)), geometry
        )
    if resize == "letterbox":
        inner_w, inner_h = _letterbox_inner(source_width, source_height, size)
        pad_x, pad_y = int(geometry.pad_x), int(geometry.pad_y)
        resized = np.zeros((height, width, 3), dtype=np.uint8)
        resized[pad_y : pad_y + inner_h, pad_x : pad_x + inner_w] = _resize(image, inner_h, inner_w)
    else:
        resized = _resize(image, height, width)
    if spec.color == "rgb":
        resized = resized[..., ::-1]
    # (x * scale - mean) / std, folded into one multiply-add per pixel, one channel at a time
    # straight into the output layout (broadcasting over a last axis of 3 is several times slower).
    gain, bias = _gain_bias(spec)
    nchw = spec.layout == "NCHW"
    tensor = np.empty((3, height, width) if nchw else (height, width, 3), dtype=np.float32)
    for channel in range(3):
        out = tensor[channel] if nchw else tensor[..., channel]
        np.multiply(resized[..., channel], gain[channel], out=out, dtype=np.float32, casting="unsafe")
        out += bias[channel]
    return PreparedTensor(tensor, geometry)


def _gain_bias(spec: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """(x * scale - mean) / std as x * gain + bias: per-channel float32 gain and bias."""
    std = np.asarray(spec.std, dtype=np.float32)
    return np.float32(spec.scale) / std, -np.asarray(spec.mean, dtype=np.float32) / std


def prepare_plan(
    source_width: int, source_height: int, size: tuple[int, int], resize: str, spec: Preprocess
) -> PreparePlan:
    """What the device prepare of a ``source_width`` x ``source_height`` frame computes, as the
    CPU path above computes it: the same picture size and padding, channel order, gain and bias."""
    geometry = fit_geometry(source_width, source_height, size, resize)
    inner_w, inner_h = _letterbox_inner(source_width, source_height, size) if resize == "letterbox" else size[::-1]
    gain, bias = _gain_bias(spec)
    return PreparePlan(
        source=(source_height, source_width),
        size=size,
        inner=(inner_h, inner_w),
        pad=(int(geometry.pad_y), int(geometry.pad_x)),
        rgb=spec.color == "rgb",
        nchw=spec.layout == "NCHW",
        gain=(float(gain[0]), float(gain[1]), float(gain[2])),
        bias=(float(bias[0]), float(bias[1]), float(bias[2])),
    )


def _letterbox_inner(source_width: int, source_height: int, size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the picture inside a letterboxed tensor of ``size``."""
    height, width = size
    scale = min(width / source_width, height / source_height)
    return round(source_width * scale), round(source_height * scale)


def fit_geometry(source_width: int, source_height: int, size: tuple[int, int], resize: str) -> Geometry:
    """How a ``source_width`` x ``source_height`` frame lands on a tensor of ``size`` (height,
    width): stretched, or letterboxed (scaled to fit, centred between padding)."""
    height, width = size
    if resize != "letterbox":
        return Geometry(width / source_width, height / source_height, 0.0, 0.0, source_width, source_height)
    scale = min(width / source_width, height / source_height)
    inner_w, inner_h = _letterbox_inner(source_width, source_height, size)
    return Geometry(scale, scale, (width - inner_w) // 2, (height - inner_h) // 2, source_width, source_height)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 in, uint8 out: OpenCV's ``INTER_LINEAR_EXACT``, the arithmetic the device prepare
    (``pipeline.gpuprep``) and ``resize_linear_exact`` compute bit-exactly."""
    resized: np.ndarray = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR_EXACT)
    return resized


def resize_linear_exact(image: Any, height: int, width: int, xp: Any = np) -> Any:
    """HxWxC uint8 -> ``height`` x ``width`` x C uint8, computed as OpenCV's ``INTER_LINEAR_EXACT``
    computes it, with any numpy-like array module ``xp``: the arithmetic that the device prepare's
    kernel (``pipeline.gpuprep``) fuses, spelled out array by array (many launches with CuPy, so not
    what ``prepare_image`` runs there; a reference the tests hold to OpenCV). Pixel centres are
    aligned and edges repeat; each row is first blended across columns with 8-bit fixed-point
    weights (a 16-bit value), then two such rows with 8-bit weights again (16 fraction bits),
    rounded half up to a whole level."""
    rows, row_weights = _fixed_point_taps(image.shape[0], height, xp)
    cols, col_weights = _fixed_point_taps(image.shape[1], width, xp)
    # Only the source rows some output row reads, each blended across columns once.
    needed, where = np.unique(np.concatenate([rows[0], rows[1]]), return_inverse=True)
    source = image[xp.asarray(needed)].astype(np.uint32)
    left, right = (w.reshape(-1, 1) for w in col_weights)  # over a row: one weight per pixel
    across = source[:, xp.asarray(cols[0])] * left + source[:, xp.asarray(cols[1])] * right
    top, bottom = across[xp.asarray(where[:height])], across[xp.asarray(where[height:])]
    upper, lower = (w.reshape(-1, 1, 1) for w in row_weights)  # over an image: one per row
    blended = top * upper + bottom * lower
    half = 1 << (2 * FRACTION_BITS - 1)
    return ((blended + half) >> (2 * FRACTION_BITS)).astype(np.uint8)


def _fixed_point_taps(source: int, target: int, xp: Any) -> tuple[tuple[np.ndarray, np.ndarray], tuple[Any, Any]]:
    """For each target index: the two source indices it blends (host arrays) and their weights
    in fixed point (``xp`` arrays), summing to 1 << 8. Cached per size and array module (and
    device), so same-size frames upload nothing: read-only, never to be written by a caller."""
    table = linear_taps(source, target)
    weights = taps_for(source, target, xp)
    return (table[0], table[1]), (weights[2], weights[3])


def tensor_size(card: ModelCard, spec: Preprocess, size: list[int] | None) -> tuple[int, int]:
    """(height, width) of the tensor: ``size`` as asked, else the card's; a ``ConfigError`` at
    ``params.size`` where the model needs multiples of something else."""
    height, width = size or spec.size
    multiple = spec.multiple_of
    if height % multiple or width % multiple:
        raise ConfigError("params.size", f"[{height}, {width}]: model {card.name!r} needs multiples of {multiple}")
    return height, width


def deferred_frame(frame: VideoFrame, size: tuple[int, int], resize: str, spec: Preprocess) -> DeferredTensor:
    """``prepare_frame`` left for later: shape and geometry known now (what the batcher and post
    processing need), the work done when the model is about to run the frame."""
    height, width = size
    return DeferredTensor(
        lambda: prepare_frame(frame, size, resize, spec).data,
        shape=(3, height, width) if spec.layout == "NCHW" else (height, width, 3),
        geometry=fit_geometry(frame.width, frame.height, size, resize),
        on_device=hasattr(frame.data, "__cuda_array_interface__"),
    )
