"""What flows between stages besides media: model tensors with their geometry, and model outputs.

A preparing stage leaves a ``PreparedTensor`` (or a ``DeferredTensor``: prepared when the model is
about to run it) under its name in ``Item.tensors``; ``infer`` leaves a ``ModelOutput``. The
``Geometry`` of a resize travels with the tensor, so post-processing maps model coordinates back
to source-frame pixels. Arrays may live on the host (numpy) or a GPU (``__cuda_array_interface__``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
    """A tensor not prepared yet: ``array()`` prepares it (``prepare``), when the model is about to
    run it. On a live stream the graph cannot keep up with, most frames that reach ``infer`` are
    dropped there (a newer frame of the stream took their place, or they could not finish in
    time); preparing only the frames that run spares the cores for the model."""

    prepare: Callable[[], Any]
    """Makes the array (blocking)."""
    shape: tuple[int, ...]
    geometry: Geometry | None = None
    dtype: np.dtype[Any] = field(default_factory=lambda: np.dtype(np.float32))
    on_device: bool = False
    """Whether the array will be in device memory (prepared from a frame there)."""
    _prepared: Any = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    """Two callers at once (two ``infer`` branches share a forked item's tensor) prepare it once."""

    def array(self) -> Any:
        """The tensor, prepared on first use. Blocking: call it off the event loop."""
        with self._lock:
            if self._prepared is None:
                object.__setattr__(self, "_prepared", self.prepare())  # a cache: the value does not change
            return self._prepared

    @property
    def data(self) -> Any:
        """``array()``, for a stage written against ``PreparedTensor.data``. Blocking the first
        time: read it in the thread pool (``ctx.run_blocking``), not in ``process`` itself."""
        return self.array()


ModelInput = PreparedTensor | DeferredTensor
"""What a preparing stage leaves for ``infer``: a tensor, or one to prepare when it runs."""


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """One tensor's outputs (batch dimension removed) and the geometry of the tensor it ran on."""

    model: str
    outputs: dict[str, np.ndarray]
    geometry: Geometry | None


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
