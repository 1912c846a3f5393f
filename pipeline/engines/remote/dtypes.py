"""Tensor element types by each protocol's name for them, and numpy's."""

from __future__ import annotations

import numpy as np

V2_TO_NUMPY = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
"""KServe v2 (Triton, KServe, OVMS) ``datatype``; ``BYTES`` and ``BF16`` have no numpy type."""

NUMPY_TO_V2 = {numpy: v2 for v2, numpy in V2_TO_NUMPY.items()}

TF_TO_NUMPY = {
    "DT_BOOL": "bool",
    "DT_UINT8": "uint8",
    "DT_UINT16": "uint16",
    "DT_UINT32": "uint32",
    "DT_UINT64": "uint64",
    "DT_INT8": "int8",
    "DT_INT16": "int16",
    "DT_INT32": "int32",
    "DT_INT64": "int64",
    "DT_HALF": "float16",
    "DT_FLOAT": "float32",
    "DT_DOUBLE": "float64",
}
"""TensorFlow's ``DataType`` names, as TF Serving's metadata gives them."""


def v2_datatype(array: np.ndarray) -> str:
    """The v2 ``datatype`` of a numpy array; ``ValueError`` for one the protocol cannot carry."""
    try:
        return NUMPY_TO_V2[array.dtype.name]
    except KeyError:
        raise ValueError(f"no KServe v2 datatype for numpy {array.dtype}") from None
