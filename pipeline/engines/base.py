"""The engine interface: named inputs and outputs, a batch in, a batch out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

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


class Engine(ABC):
    """A loaded model. ``infer`` is blocking: callers run it in the thread pool."""

    def __init__(self, card: ModelCard) -> None:
        self.card = card

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
