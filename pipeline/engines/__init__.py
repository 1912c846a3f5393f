"""Inference engines behind one interface, registered by name (``registry``).

Built in: ``onnxruntime``, ``tensorrt`` and ``auto`` (the best of them usable here). The GPU
stacks are imported only when an engine that needs them loads a model, so the CPU path needs no CUDA.
"""

from __future__ import annotations

from .auto import (
    AutoOptions,
    EngineChoice,
    choose_engine,
    cuda_device_unusable,
    onnxruntime_cuda_unusable,
    tensorrt_unusable,
)
from .base import Engine, EngineMetadata, EngineOptions, RunSettings, TensorInfo
from .registry import UnknownEngine, create_engine, engine_entry, engine_names, register_engine

__all__ = [
    "AutoOptions",
    "Engine",
    "EngineChoice",
    "EngineMetadata",
    "EngineOptions",
    "RunSettings",
    "TensorInfo",
    "UnknownEngine",
    "choose_engine",
    "create_engine",
    "cuda_device_unusable",
    "engine_entry",
    "engine_names",
    "onnxruntime_cuda_unusable",
    "register_engine",
    "tensorrt_unusable",
]
