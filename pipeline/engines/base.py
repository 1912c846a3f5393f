"""The engine interface: named inputs and outputs, a batch in, a batch out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..modelcard import ModelCard, TensorSpec


@dataclass(frozen=True)
class EngineOptions:
    providers: tuple[str, ...] | None = None
    """ONNX Runtime execution providers in order; None: every usable one, best first."""
    intra_op_threads: int = 0
    """Threads one model run may use; 0 lets the engine decide."""
    max_batch: int = 1
    """The largest batch the stage sends (TensorRT builds its optimization profile up to it)."""
    fp16: bool = False
    """Let TensorRT use half precision where it is faster."""
    device_outputs: bool = False
    """GPU engines return device arrays (CuPy) instead of copying outputs to host numpy arrays."""
    tf32: bool = True
    """GPU engines may compute float32 matrix products in TF32 (faster on Ampere and later; moves
    outputs by about 1e-2). Off for parity checks against the CPU."""


class Engine(ABC):
    """A loaded model. ``infer`` is blocking: callers run it in the thread pool."""

    def __init__(self, card: ModelCard) -> None:
        self.card = card
        self.host_copies = 0
        """Host inputs a GPU engine had to copy to the device (0 in a zero-copy GPU pipeline)."""
        self.device_copies = 0
        """Device inputs a CPU engine had to copy to the host (NVDEC frames fed to a CPU model)."""

    @property
    def on_device(self) -> bool:
        """Whether the model runs on a GPU, so device inputs (``__cuda_array_interface__``) are
        taken as they are and host inputs are copied there."""
        return False

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.card.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.card.outputs

    @property
    @abstractmethod
    def description(self) -> str:
        """What runs the model (engine and device), for logs."""

    @abstractmethod
    def infer(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run one batch: input name -> array, returns output name -> array."""


def is_contiguous(interface: dict[str, Any]) -> bool:
    """Whether a ``__cuda_array_interface__`` describes a C-contiguous buffer (``strides`` None,
    or equal to the dense strides of its shape)."""
    strides = interface.get("strides")
    if strides is None:
        return True
    expected = []
    step = np.dtype(interface["typestr"]).itemsize
    for dim in reversed(interface["shape"]):
        expected.append(step)
        step *= dim
    return tuple(strides) == tuple(reversed(expected))
