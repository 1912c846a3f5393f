"""The CUDA runtime through cuda-python, imported only by the GPU engines."""

from __future__ import annotations

from typing import Any

try:  # cuda-python >= 12.6 moved the bindings; older releases have the flat module
    from cuda.bindings import runtime as cudart
except ImportError:  # pragma: no cover - depends on the installed cuda-python
    from cuda import cudart


def cuda_check(result: Any) -> Any:
    """A cuda-python call's ``(error, *values)``, returned whole once the error is success."""
    error = result[0]
    if error != cudart.cudaError_t.cudaSuccess:
        _, message = cudart.cudaGetErrorString(error)
        raise RuntimeError(f"CUDA: {message.decode(errors='replace') if isinstance(message, bytes) else message}")
    return result


__all__ = ["cuda_check", "cudart"]
