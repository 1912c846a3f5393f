"""Inference engines behind one interface; each imported lazily so the CPU path needs no CUDA."""

from __future__ import annotations

from typing import Literal

from ..modelcard import ModelCard
from .base import Engine, EngineOptions

EngineKind = Literal["auto", "onnxruntime"]


def create_engine(kind: EngineKind, card: ModelCard, options: EngineOptions) -> Engine:
    """Load ``card`` with the named engine; ``auto`` picks the best one installed."""
    if kind in ("auto", "onnxruntime"):
        from .onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(card, options)
    raise ValueError(f"unknown engine {kind!r}")


__all__ = ["Engine", "EngineKind", "EngineOptions", "create_engine"]
