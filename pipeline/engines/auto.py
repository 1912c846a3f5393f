"""``engine: auto``: the best engine usable here for a local ONNX model.

TensorRT 10 where it is usable, else ONNX Runtime with CUDA where a session really loads it, else
the CPU: there, ONNX Runtime or OpenVINO, whichever runs this model faster in a short measured
warm-up (``cpu_race``; both figures logged): which wins depends on the CPU and the model (OpenVINO
1.2-2.7x faster on some, slower on others), so it is measured, never assumed. Logged with why the
better ones were passed over. The probes are ``pipeline.capabilities``'s, the same ``streamgraph
doctor`` prints. Naming ``providers`` picks ONNX Runtime with them.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from .. import capabilities
from ..errors import ModelError
from ..modelcard import ModelCard
from .base import Engine, EngineOptions, RunSettings, return_freed_memory
from .onnxruntime import OnnxRuntimeEngine, OnnxRuntimeOptions
from .openvino import OpenVinoEngine, OpenVinoOptions
from .registry import register_engine
from .tensorrt import TensorRtEngine, TensorRtOptions
from .warmup import constant_feeds, warm_up_feeds

log = logging.getLogger("streamgraph.engine")


class AutoOptions(EngineOptions):
    """What either engine ``auto`` may choose takes."""

    providers: list[str] | None = None
    """ONNX Runtime execution providers, in order; naming them picks ONNX Runtime."""
    intra_op_threads: int = Field(default=0, ge=0)
    """ONNX Runtime: threads per model run; 0 lets it use every core."""
    fp16: bool = False
    """TensorRT: half precision where that is faster."""
    tf32: bool = True
    """GPU: float32 matrix products in TF32 (faster; outputs move by about 1e-2)."""


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
    *,
    tensorrt: Callable[[], str | None] = tensorrt_unusable,
    onnxruntime_cuda: Callable[[], str | None] = onnxruntime_cuda_unusable,
) -> EngineChoice:
    """The best usable engine here, and why the better ones were passed over."""
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


@register_engine("auto", AutoOptions)
def load_auto(card: ModelCard, options: AutoOptions, settings: RunSettings) -> Engine:
    """Load ``card`` with the best engine usable here (logged with why)."""
    common = {"tf32": options.tf32}
    if options.providers:
        return OnnxRuntimeEngine(
            card,
            OnnxRuntimeOptions(providers=options.providers, intra_op_threads=options.intra_op_threads, **common),
            settings,
        )
    choice = choose_engine()
    on_cpu = choice.providers == ("CPUExecutionProvider",)
    log.info(
        "model %s: engine auto %s (%s)", card.name, "runs on the CPU" if on_cpu else f"chose {choice.kind}", choice.why
    )
    if choice.kind == "tensorrt":
        try:
            return TensorRtEngine(card, TensorRtOptions(fp16=options.fp16, **common), settings)
        except ModelError as exc:
            # A model TensorRT cannot take (a dynamic axis the card gives no range for) still runs.
            log.warning("model %s: TensorRT cannot take it (%s); using ONNX Runtime", card.name, exc)
            choice = choose_engine(tensorrt=lambda: "cannot build this model")
    providers = list(choice.providers) if choice.providers else None
    ort_options = OnnxRuntimeOptions(providers=providers, intra_op_threads=options.intra_op_threads, **common)
    onnxruntime = OnnxRuntimeEngine(card, ort_options, settings, providers_named=False)
    if onnxruntime.on_device:
        return onnxruntime
    engine = cpu_race(card, onnxruntime, options, settings)
    del onnxruntime  # the loser, if it lost: nothing refers to it now
    return_freed_memory()
    return engine


RACE_RUNS = 3
"""Timed runs of each engine on the CPU (after one untimed): the median decides."""
RACE_BATCH = 4
"""The largest batch the race runs (the stage's own largest, up to this)."""


def cpu_race(card: ModelCard, onnxruntime: Engine, options: AutoOptions, settings: RunSettings) -> Engine:
    """ONNX Runtime or OpenVINO on the CPU, whichever runs ``card`` faster on zeros of its input
    size at the stage's batch size (up to ``RACE_BATCH``); logged with both figures. ONNX Runtime
    where OpenVINO is not installed, cannot load the model, or there is no input size to measure at."""
    batch = max(1, min(settings.max_batch, RACE_BATCH))
    feeds = warm_up_feeds(card, batch=batch)
    if feeds is None:
        log.info(
            "model %s: engine auto runs onnxruntime on the CPU (no fixed input size to race OpenVINO on)", card.name
        )
        return onnxruntime
    feeds.update(constant_feeds(card))
    try:
        openvino = OpenVinoEngine(card, OpenVinoOptions(intra_op_threads=options.intra_op_threads), settings)
    except ModelError as exc:
        log.info("model %s: engine auto runs onnxruntime on the CPU (OpenVINO: %s)", card.name, exc)
        return onnxruntime
    openvino.settle(feeds)
    times = {engine: median_ms(engine, feeds) for engine in (onnxruntime, openvino)}
    winner, loser = sorted(times, key=lambda engine: times[engine])
    log.info(
        "model %s: engine auto chose %s on the CPU: %.1f ms a batch of %d against %s's %.1f ms",
        card.name,
        winner.description,
        times[winner],
        batch,
        loser.description,
        times[loser],
    )
    if loser is openvino:
        openvino.close_now()
    return winner


def median_ms(engine: Engine, feeds: dict[str, object]) -> float:
    engine.infer(feeds)
    times = []
    for _ in range(RACE_RUNS):
        began = time.perf_counter()
        engine.infer(feeds)
        times.append((time.perf_counter() - began) * 1000.0)
    return statistics.median(times)
