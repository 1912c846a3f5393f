"""Inference engines behind one interface; each imported lazily so the CPU path needs no CUDA.

``engine: auto`` takes the first usable of TensorRT, ONNX Runtime with CUDA, ONNX Runtime on the
CPU, and logs which it chose and why the better ones were passed over.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .. import capabilities
from ..errors import ModelError
from ..modelcard import ModelCard
from .base import Engine, EngineOptions

EngineKind = Literal["auto", "onnxruntime", "tensorrt"]

log = logging.getLogger("streamgraph.engine")


@dataclass(frozen=True)
class EngineChoice:
    kind: Literal["onnxruntime", "tensorrt"]
    providers: tuple[str, ...] | None
    """For ONNX Runtime: the providers to ask for (None: the best installed)."""
    why: str


def tensorrt_unusable() -> str | None:
    """Why TensorRT cannot run here, or None if it can (``streamgraph doctor`` asks the same)."""
    return capabilities.tensorrt().problem


def cuda_device_unusable() -> str | None:
    """Why no CUDA device can be used, or None if device 0 can."""
    return capabilities.cuda_device().problem


def onnxruntime_cuda_unusable() -> str | None:
    """Why ONNX Runtime cannot run on CUDA here (a session on a probe model shows it), or None."""
    return capabilities.onnxruntime_cuda().problem


def choose_engine(
    kind: EngineKind,
    *,
    tensorrt: Callable[[], str | None] = tensorrt_unusable,
    onnxruntime_cuda: Callable[[], str | None] = onnxruntime_cuda_unusable,
) -> EngineChoice:
    """The engine ``kind`` asks for; for ``auto``, the best usable one and why."""
    if kind == "tensorrt":
        return EngineChoice("tensorrt", None, "asked for")
    if kind == "onnxruntime":
        return EngineChoice("onnxruntime", None, "asked for")
    passed_over = []
    trt_problem = tensorrt()
    if trt_problem is None:
        return EngineChoice("tensorrt", None, "TensorRT and a CUDA device are usable")
    passed_over.append(f"TensorRT: {trt_problem}")
    cuda_problem = onnxruntime_cuda()
    if cuda_problem is None:
        why = "; ".join([*passed_over, "ONNX Runtime has CUDA"])
        return EngineChoice("onnxruntime", ("CUDAExecutionProvider", "CPUExecutionProvider"), why)
    passed_over.append(f"ONNX Runtime CUDA: {cuda_problem}")
    return EngineChoice("onnxruntime", ("CPUExecutionProvider",), "; ".join(passed_over))


def create_engine(kind: EngineKind, card: ModelCard, options: EngineOptions) -> Engine:
    """Load ``card`` with the named engine; ``auto`` picks the best one usable (and logs why)."""
    if kind not in ("auto", "onnxruntime", "tensorrt"):
        raise ValueError(f"unknown engine {kind!r}")
    if kind == "auto" and options.providers:
        kind = "onnxruntime"  # providers are ONNX Runtime's: naming them picks it
    choice = choose_engine(kind)
    if kind == "auto":
        log.info("model %s: engine auto chose %s (%s)", card.name, choice.kind, choice.why)
    if choice.kind == "tensorrt":
        from .tensorrt import TensorRtEngine

        try:
            return TensorRtEngine(card, options)
        except ModelError as exc:
            if kind != "auto":
                raise
            # A model TensorRT cannot take (a dynamic axis the card gives no range for) still runs.
            log.warning("model %s: TensorRT cannot take it (%s); using ONNX Runtime", card.name, exc)
            choice = choose_engine("auto", tensorrt=lambda: "cannot build this model")
    from .onnxruntime import OnnxRuntimeEngine

    if options.providers is None and choice.providers is not None:
        options = dataclasses.replace(options, providers=choice.providers)
    return OnnxRuntimeEngine(card, options)


__all__ = [
    "Engine",
    "EngineChoice",
    "EngineKind",
    "EngineOptions",
    "choose_engine",
    "create_engine",
    "cuda_device_unusable",
]
