"""Where a batch's arrays live: stacked on the host, or on the GPU for a model there."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from pipeline.tensors import DeferredTensor, ModelInput, array_module


def stack_batch(tensors: list[Any]) -> Any:
    """One batch array of the tensors. Device tensors (a GPU prepare's) are stacked on the device,
    so the batch never visits the host, and the stack is complete when returned: the engine reads
    it on a stream of its own."""
    xp = array_module(tensors[0])
    if xp is np:
        return np.stack(tensors)
    batch = xp.stack([xp.asarray(t) for t in tensors])
    xp.cuda.get_current_stream().synchronize()
    return batch


def tensor_on_device(tensor: ModelInput) -> bool:
    """Whether a model input is (or, prepared, will be) in device memory."""
    if isinstance(tensor, DeferredTensor):
        return tensor.on_device
    return hasattr(tensor.data, "__cuda_array_interface__")


def device_module() -> Any:
    """CuPy, for an engine on a GPU (imported only then); numpy where CuPy is not installed (ONNX
    Runtime CUDA alone: host arrays, copied by the engine and counted)."""
    if importlib.util.find_spec("cupy") is None:
        return np
    import cupy

    return cupy
