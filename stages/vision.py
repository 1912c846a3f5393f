"""``prepare``: frames to model tensors (resize or letterbox, color order, normalize, layout).

The geometry of the resize travels with the tensor, so post-processing can map model
coordinates back to source-frame pixels. With ``latency_budget_ms`` a frame already older than
that is dropped (``late:<stage>``) before it costs any work. On a live stream the work is left to
``infer`` (``DeferredTensor``), which prepares only the frames it is about to run, when every stage
this one feeds prepares such frames itself (``Stage.takes_deferred_from``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field

from pipeline.errors import ConfigError
from pipeline.media import EndOfStream, Item, StreamInfo, VideoFrame, overdue_ms
from pipeline.modelcard import ModelCard, Preprocess, load_model_card
from pipeline.stage import Stage, StageContext, StageParams, register_stage

from .gpuprep import FRACTION_BITS, PreparePlan, linear_taps, prepare_on_device, taps_for


@dataclass(frozen=True, slots=True)
class Geometry:
    """How source pixels map onto the tensor: ``tensor = source * scale + pad``."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    source_width: int
    source_height: int

    def to_source(self, points: np.ndarray) -> np.ndarray:
        """Tensor (x, y) points -> source pixels, clipped to the frame."""
        out = np.empty_like(points, dtype=np.float32)
        out[..., 0] = np.clip((points[..., 0] - self.pad_x) / self.scale_x, 0, self.source_width)
        out[..., 1] = np.clip((points[..., 1] - self.pad_y) / self.scale_y, 0, self.source_height)
        return out


@dataclass(frozen=True, slots=True)
class PreparedTensor:
    data: np.ndarray
    """One item's tensor, without the batch dimension (CHW or HWC, float32)."""
    geometry: Geometry | None = None
    """How it maps back onto the source frame; ``None`` for tensors that are not images of it."""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.data.dtype)

    def array(self) -> Any:
        return self.data


@dataclass(frozen=True, slots=True)
class DeferredTensor:
    """A frame's tensor not prepared yet: ``array()`` prepares it, when the model is about to run
    it. On a live stream the graph cannot keep up with, most frames that reach ``infer`` are
    dropped there (a newer frame of the stream took their place, or they could not finish in
    time); preparing only the frames that run spares the cores for the model."""

    frame: VideoFrame
    size: tuple[int, int]
    resize: str
    spec: Preprocess
    _prepared: Any = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    """Two callers at once (two ``infer`` branches share a forked item's tensor) prepare it once."""

    @property
    def geometry(self) -> Geometry:
        return fit_geometry(self.frame.width, self.frame.height, self.size, self.resize)

    @property
    def shape(self) -> tuple[int, ...]:
        height, width = self.size
        return (3, height, width) if self.spec.layout == "NCHW" else (height, width, 3)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(np.float32)

    def array(self) -> Any:
        """The tensor, prepared on first use. Blocking: call it off the event loop."""
        with self._lock:
            if self._prepared is None:
                prepared = prepare_frame(self.frame, self.size, self.resize, self.spec).data
                object.__setattr__(self, "_prepared", prepared)  # a cache: the tensor's value does not change
            return self._prepared

    @property
    def data(self) -> Any:
        """``array()``, for a stage written against ``PreparedTensor.data``. Blocking the first
        time: read it in the thread pool (``ctx.run_blocking``), not in ``process`` itself."""
        return self.array()


ModelInput = PreparedTensor | DeferredTensor
"""What a preparing stage leaves for ``infer``: a tensor, or a frame to prepare when it runs."""


class PrepareParams(StageParams):
    model: str
    """Model card whose ``preprocess`` section says how to prepare its input."""
    size: list[int] | None = Field(default=None, min_length=2, max_length=2)
    """[height, width] of the tensor; defaults to the card's size."""
    resize: Literal["stretch", "letterbox"] | None = None
    """Defaults to the card's choice."""
    latency_budget_ms: float | None = Field(default=None, gt=0)
    """Frames older than this (since capture) are dropped before preparing (live)."""
    defer: Literal["live", "always", "never"] = "live"
    """When to leave the work to ``infer``, which prepares a frame just before the model runs it
    (``DeferredTensor``): on live streams (most of their frames are dropped before the model when
    it cannot keep up) when every stage this one feeds is an ``infer``, always, or never (prepare
    here, in the thread pool, in parallel)."""


@register_stage("prepare")
class Prepare(Stage):
    Params = PrepareParams
    params: PrepareParams
    latency_key = "prepare"

    def check(self, base_dir: Path) -> None:
        self._configure(base_dir)

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self._configure(ctx.base_dir)
        others = [stage.name for stage in ctx.consumers if not stage.takes_deferred_from(self.name)]
        # A stage that reads the tensor itself would get a frame to prepare (on the event loop,
        # if it reads ``data`` in ``process``): only stages that prepare it themselves get one.
        self._may_defer = bool(ctx.consumers) and not others
        if self.params.defer == "live" and others:
            ctx.logger.info("live frames are prepared here: %s do(es) not prepare them itself", ", ".join(others))

    def takes_device_arrays(self) -> bool:
        # A device frame is prepared on the device, and worth it only for a model there.
        return any(stage.takes_device_arrays() for stage in self.ctx.consumers)

    def _configure(self, base_dir: Path) -> None:
        card, self.spec = load_preprocess(self.params.model, base_dir)
        height, width = self.params.size or self.spec.size
        multiple = self.spec.multiple_of
        if height % multiple or width % multiple:
            raise ConfigError("params.size", f"[{height}, {width}]: model {card.name!r} needs multiples of {multiple}")
        self.size = (height, width)
        self.resize = self.params.resize or self.spec.resize
        self._live: set[str] = set()

    async def on_stream_added(self, info: StreamInfo) -> None:
        if info.live:
            self._live.add(info.stream_id)

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        self._live.discard(eos.stream_id)
        return ()

    async def process(self, item: Item) -> Sequence[Item]:
        frame = item.media
        if not isinstance(frame, VideoFrame):
            return (item,)
        if overdue_ms(item.capture_time, self.params.latency_budget_ms) is not None:
            self.ctx.stats.drop_item(item, f"late:{self.name}")
            return ()
        defer = self.params.defer
        if defer == "always" or (defer == "live" and self._may_defer and item.stream_id in self._live):
            item.tensors[self.name] = DeferredTensor(frame, self.size, self.resize, self.spec)
        else:
            item.tensors[self.name] = await self.ctx.run_blocking(
                prepare_frame, frame, self.size, self.resize, self.spec
            )
        return (item,)


def load_preprocess(model: str, base_dir: Path) -> tuple[ModelCard, Preprocess]:
    """A stage's model card and its ``preprocess`` section (a ``ConfigError`` at params.model without)."""
    card = load_model_card(model, base_dir)
    if card.preprocess is None:
        raise ConfigError("params.model", f"model card {card.name!r} has no preprocess section")
    return card, card.preprocess


def prepare_frame(frame: VideoFrame, size: tuple[int, int], resize: str, spec: Preprocess) -> PreparedTensor:
    """``prepare_image`` on a frame's pixels (converted here, in the thread pool, if need be)."""
    return prepare_image(frame.bgr(), size, resize, spec)


def prepare_image(image: Any, size: tuple[int, int], resize: str, spec: Preprocess) -> PreparedTensor:
    """BGR uint8 HxWx3 -> normalized float32 tensor of ``size`` (height, width) in the card's layout.

    A numpy image is resized by OpenCV (``INTER_LINEAR_EXACT``) and normalized here; a device
    array (``__cuda_array_interface__``: CuPy, a decoder's surface) is prepared on the device in
    one kernel (``stages.gpuprep``), and the tensor stays there, complete. Both compute the same
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


def array_module(array: Any) -> Any:
    """``cupy`` for a device array, else ``numpy``; CuPy is imported only when one is seen."""
    if hasattr(array, "__cuda_array_interface__"):
        import cupy

        return cupy
    return np


def to_host(array: Any) -> np.ndarray:
    """A numpy array of ``array``: itself on the CPU, copied from the device otherwise (a stage
    that needs host pixels, such as OpenCV cropping, asks for them explicitly)."""
    if hasattr(array, "__cuda_array_interface__"):
        host: np.ndarray = array_module(array).asnumpy(array)
        return host
    return np.asarray(array)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 in, uint8 out: OpenCV's ``INTER_LINEAR_EXACT``, the arithmetic the device prepare
    (``stages.gpuprep``) and ``resize_linear_exact`` compute bit-exactly."""
    resized: np.ndarray = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR_EXACT)
    return resized


def resize_linear_exact(image: Any, height: int, width: int, xp: Any = np) -> Any:
    """HxWxC uint8 -> ``height`` x ``width`` x C uint8, computed as OpenCV's ``INTER_LINEAR_EXACT``
    computes it, with any numpy-like array module ``xp``: the arithmetic that the device prepare's
    kernel (``stages.gpuprep``) fuses, spelled out array by array (many launches with CuPy, so not
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
