"""What triton_serve.py and kserve_serve.py share: ONNX models on ONNX Runtime (CPU) and the CLI.

Each server runs in its own virtual environment (``.venv-triton``, ``.venv-kserve``, made by
``make servers``) that has numpy and onnxruntime but not this project, so this module imports
nothing else. The scripts find it because Python puts a script's own folder on ``sys.path``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import numpy as np
import onnxruntime as ort

# ONNX Runtime's type strings -> numpy dtype and the KServe v2 / Triton datatype name.
_ORT_TYPES: dict[str, tuple[type[np.generic], str]] = {
    "tensor(float)": (np.float32, "FP32"),
    "tensor(float16)": (np.float16, "FP16"),
    "tensor(double)": (np.float64, "FP64"),
    "tensor(int8)": (np.int8, "INT8"),
    "tensor(int16)": (np.int16, "INT16"),
    "tensor(int32)": (np.int32, "INT32"),
    "tensor(int64)": (np.int64, "INT64"),
    "tensor(uint8)": (np.uint8, "UINT8"),
    "tensor(uint16)": (np.uint16, "UINT16"),
    "tensor(uint32)": (np.uint32, "UINT32"),
    "tensor(uint64)": (np.uint64, "UINT64"),
    "tensor(bool)": (np.bool_, "BOOL"),
}


class ServeError(Exception):
    """A problem worth one clean line on stderr (a missing file, an unservable model), not a traceback."""


@dataclass(frozen=True)
class TensorInfo:
    """One input or output as the ONNX file declares it; ``shape`` has -1 for every dynamic axis."""

    name: str
    dtype: type[np.generic]
    datatype: str
    shape: tuple[int, ...]

    def v2_metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSpec:
    """``--model NAME=PATH``."""

    name: str
    path: Path


class OnnxModel:
    """An ONNX Runtime CPU session and the tensors it declares; the first axis is the batch axis."""

    def __init__(self, spec: ModelSpec, threads: int = 0) -> None:
        self.name = spec.name
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(spec.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for unreadable or invalid files
            raise ServeError(f"model {spec.name!r}: ONNX Runtime cannot load {spec.path}: {exc}") from None
        self.inputs = [_tensor_info(spec.name, node) for node in self.session.get_inputs()]
        self.outputs = [_tensor_info(spec.name, node) for node in self.session.get_outputs()]
        for tensor in self.inputs:
            if not tensor.shape or tensor.shape[0] != -1:
                raise ServeError(
                    f"model {spec.name!r}: input {tensor.name!r} has shape {list(tensor.shape)}; "
                    "these servers need a dynamic first (batch) axis"
                )

    @property
    def input_names(self) -> list[str]:
        return [tensor.name for tensor in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [tensor.name for tensor in self.outputs]

    def input_problem(self, name: str, array: np.ndarray) -> str | None:
        """Why ``array`` cannot feed input ``name`` (dtype, rank, a fixed size), or None.

        Triton checks this itself; KServe does not, and ONNX Runtime's own message is cryptic.
        """
        tensor = next((t for t in self.inputs if t.name == name), None)
        if tensor is None:
            return f"model {self.name!r} has no input {name!r} (its inputs: {', '.join(self.input_names)})"
        if array.dtype != np.dtype(tensor.dtype):
            return f"input {name!r}: expected {tensor.datatype} ({np.dtype(tensor.dtype).name}), got {array.dtype.name}"
        fits = array.ndim == len(tensor.shape) and all(
            want in (-1, got) for want, got in zip(tensor.shape, array.shape, strict=True)
        )
        if not fits:
            return f"input {name!r}: expected shape {list(tensor.shape)} (-1: any), got {list(array.shape)}"
        return None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on a batch; every input must be present (ONNX Runtime names the one missing)."""
        results = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, results, strict=True))


def _tensor_info(model: str, node: Any) -> TensorInfo:
    if node.type not in _ORT_TYPES:
        raise ServeError(
            f"model {model!r}: tensor {node.name!r} has type {node.type}, which these servers do not serve"
        )
    dtype, datatype = _ORT_TYPES[node.type]
    # Symbolic names ('batch', 'p2o.DynamicDimension.0'), None and non-positive sizes are all dynamic.
    shape = tuple(dim if isinstance(dim, int) and dim > 0 else -1 for dim in node.shape)
    return TensorInfo(node.name, dtype, datatype, shape)


def model_spec(text: str) -> ModelSpec:
    """argparse type for ``NAME=PATH.onnx``: the file must exist (checked before any server starts)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH.onnx, got {text!r}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise argparse.ArgumentTypeError(f"model {name!r}: ONNX file {file} not found")
    return ModelSpec(name, file.resolve())


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        dest="models",
        metavar="NAME=PATH.onnx",
        type=model_spec,
        action="append",
        required=True,
        help="serve this ONNX file under NAME (repeatable)",
    )
    parser.add_argument(
        "--ort-threads", type=int, default=0, help="ONNX Runtime intra-op threads per model (0: its default)"
    )


def load_models(specs: list[ModelSpec], threads: int) -> list[OnnxModel]:
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ServeError(f"model names given more than once: {', '.join(duplicates)}")
    return [OnnxModel(spec, threads) for spec in specs]


def stop_event() -> threading.Event:
    """An event set by the first SIGTERM or SIGINT; a second one exits at once (a stuck shutdown)."""
    event = threading.Event()

    def handle(signum: int, _frame: FrameType | None) -> None:
        if event.is_set():
            raise SystemExit(128 + signum)
        event.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return event


def announce_ready(http_port: int, grpc_port: int) -> None:
    """The one line the test fixtures and scripts wait for."""
    print(f"ready: http={http_port} grpc={grpc_port}", flush=True)


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)
