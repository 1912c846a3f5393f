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
