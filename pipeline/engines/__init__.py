"""Inference engines behind one interface, registered by name (``registry``).

Built in: ``onnxruntime``, ``openvino``, ``tensorrt`` and ``auto`` (the best of them usable here), and the
inference servers (``remote``): ``triton``, ``kserve``, ``tfserving``, ``torchserve``. The GPU
stacks are imported only when an engine that needs them loads a model, so the CPU path needs no
CUDA; gRPC only when a stage uses a ``grpc://`` server.
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
from .openvino import OpenVinoEngine, OpenVinoOptions
from .registry import (
    UnknownEngine,
    check_engine,
    create_engine,
    engine_entry,
    engine_names,
    load_engine,
    register_engine,
)
from .remote import RemoteEngine, RemoteOptions, ServerOptions

__all__ = [
    "AutoOptions",
    "Engine",
    "EngineChoice",
    "EngineMetadata",
    "EngineOptions",
    "OpenVinoEngine",
    "OpenVinoOptions",
    "RemoteEngine",
    "RemoteOptions",
    "RunSettings",
    "ServerOptions",
    "TensorInfo",
    "UnknownEngine",
    "check_engine",
    "choose_engine",
    "create_engine",
    "cuda_device_unusable",
    "engine_entry",
    "engine_names",
    "load_engine",
    "onnxruntime_cuda_unusable",
    "register_engine",
    "tensorrt_unusable",
]
