"""OpenVINO engine: the card's ONNX file through Intel's OpenVINO runtime (``pip install -e '.[openvino]'``).

On many CPUs OpenVINO runs the same ONNX file faster than ONNX Runtime does, and it offers bf16
(where the CPU has it) and int8 (a model quantized on frames of the samples). A precision below
f32 is used only once it passes the accuracy gate (``pipeline.precision``): the same held frames
through the f32 model and the reduced one, compared by the task's metric.

The model is compiled once (its dynamic axes stay dynamic, so every batch size runs on the one
compiled model) and keeps a pool of infer requests: as many as OpenVINO finds best for the
``hint`` and ``streams`` (one for ``latency``), so that many batches can run at once
(``max_in_flight``), each on a request of its own. ``openvino`` is imported only when this engine
loads a model.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..errors import ModelError
from ..modelcard import ModelCard
from ..modelstore import model_path
from .base import Engine, EngineMetadata, EngineOptions, RunSettings, TensorInfo, return_freed_memory
from .onnxruntime import fixed_batch
from .registry import register_engine

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger("streamgraph.engine.openvino")

Precision = Literal["f32", "bf16", "int8"]


class OpenVinoOptions(EngineOptions):
    device: str = "CPU"
    """OpenVINO's device name: ``CPU``; ``GPU`` (an Intel GPU) is accepted but untested here."""
    precision: Literal["f32", "bf16", "int8", "auto"] = "f32"
    """``f32``: as the file is. ``bf16`` (CPUs with AVX-512 BF16 or AMX) and ``int8`` (quantized
    on sample frames) must pass the accuracy gate against f32 or the stage refuses to start;
    ``auto`` takes the first of int8, bf16, f32 that this CPU has and that passes."""
    hint: Literal["latency", "throughput"] = "latency"
    """OpenVINO's performance hint: one request at a time using every core, or several requests
    side by side (``streams``), each on some of the cores."""
    streams: int | None = Field(default=None, ge=1)
    """OpenVINO's parallel streams (NUM_STREAMS); default: what the hint picks."""
    intra_op_threads: int = Field(default=0, ge=0)
    """Threads per model run (INFERENCE_NUM_THREADS); 0 lets OpenVINO use every core."""


_PRECISION_HINTS = {"f32": "f32", "bf16": "bf16", "int8": "f32"}
"""OpenVINO's inference precision for each of ours: an int8 model's layers that stay in floating
point run in f32, so what the gate measures is the quantization alone."""

_CAPABILITY = {"bf16": "BF16", "int8": "INT8"}
"""What OpenVINO's OPTIMIZATION_CAPABILITIES must list for a device to run a precision."""


def openvino_module() -> Any:
    """The ``openvino`` package, or a ``ModelError`` that says how to install it."""
    # ``import openvino`` imports its converter, which starts openvino_telemetry's sender: a thread
    # that outlives the run (it holds up the exit), for usage events nobody consented to here.
    # Blocking that module makes OpenVINO use its own stub: no thread, nothing sent.
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    try:
        import openvino
    except ImportError:
        raise ModelError(
            "engine openvino needs the openvino package: pip install -e '.[openvino]' (or pip install openvino)"
        ) from None
    return openvino


def device_capabilities(core: Any, device: str) -> list[str]:
    """What OpenVINO says ``device`` can run fast (``FP32``, ``BF16``, ``INT8``, ...); a
    ``ModelError`` naming the devices there are for one OpenVINO does not have."""
    available = list(core.available_devices)
    if device not in available and device.split(".")[0] not in {name.split(".")[0] for name in available}:
        raise ModelError(f"OpenVINO has no device {device!r} here; available: {', '.join(available) or 'none'}")
    try:
        return [str(c) for c in core.get_property(device, "OPTIMIZATION_CAPABILITIES")]
    except RuntimeError as exc:
        raise ModelError(f"OpenVINO device {device!r}: {last_line(exc)}") from None


def last_line(exc: BaseException) -> str:
    """OpenVINO's messages run to many lines of source locations; the last says what is wrong
    (``Conversion is failed for: Conv-16, ReduceMean-16``)."""
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip(" -")]
    return lines[-1] if lines else type(exc).__name__


def precision_unsupported(precision: Precision, capabilities: list[str]) -> str | None:
    """Why a device with these capabilities cannot run ``precision``, or None."""
    needed = _CAPABILITY.get(precision)
    if needed is None or needed in capabilities:
        return None
    return f"the device has no {precision} (OpenVINO reports {', '.join(capabilities)})"


def compile_config(options: OpenVinoOptions, precision: Precision) -> dict[str, str]:
    config = {
        "INFERENCE_PRECISION_HINT": _PRECISION_HINTS[precision],
        "PERFORMANCE_HINT": options.hint.upper(),
    }
    if options.streams is not None:
        config["NUM_STREAMS"] = str(options.streams)
    if options.intra_op_threads:
        config["INFERENCE_NUM_THREADS"] = str(options.intra_op_threads)
    return config


class CompiledModel:
    """One compiled OpenVINO model and its pool of infer requests, run from several threads."""

    def __init__(self, compiled: Any, names: set[str]) -> None:
        self.compiled = compiled
        self.requests_wanted = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(self.requests_wanted):
            self._idle.put(compiled.create_infer_request())
        self._output_names = [port_name(port, names) for port in compiled.outputs]

    def infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """One run on an idle request (blocking; OpenVINO lets go of the GIL while it runs).
        Outputs are copies: the request's own buffers are reused by its next run."""
        request = self._idle.get()
        try:
            outputs = request.infer(feeds, share_inputs=True, share_outputs=False)
            return {name: outputs[index] for index, name in enumerate(self._output_names)}
        finally:
            self._idle.put(request)

    def release_memory(self) -> None:
        """OpenVINO frees the buffers its runs took (they grow to the biggest shape run); waits
        for the requests running now, and holds the others back meanwhile."""
        held = [self._idle.get() for _ in range(self.requests_wanted)]
        try:
            self.compiled.release_memory()
        finally:
            for request in held:
                self._idle.put(request)


ShapeKey = tuple[tuple[str, tuple[int, ...]], ...]

STATIC_AFTER = 8
"""Runs of one input shape on the dynamic model (since memory was last released) before it gets a
model compiled for that shape: more than a probe of a batch size runs (``max_size: auto``), so a
size tried and not kept costs no compile, nor the memory of a model of its own."""
MOST_STATIC = 8
"""Shapes with a model of their own; the rest (a recognizer's many crop widths) run on the dynamic one."""
RUNS_KEPT = 512
"""Shapes whose runs are counted at once."""


class ShapeModels:
    """The model compiled once with its dynamic axes, which runs any shape, and once more for each
    shape that recurs (up to ``MOST_STATIC``), compiled in the background: OpenVINO's CPU plugin
    runs a static shape 1.15-1.25x faster (PP-OCRv4 det on 2 cores: 29 against 33 ms at batch 1,
    132 against 164 ms at batch 4), and compiling one takes about 0.3 s, too long to make a batch
    wait for it."""

    def __init__(
        self,
        core: Any,
        model_file: Path,
        device: str,
        config: dict[str, str],
        names: set[str],
        batch_axis: tuple[str, int] | None = None,
    ) -> None:
        """``batch_axis``: the input and axis that hold the batch (``release``)."""
        self._core = core
        self.names = names
        self._batch_axis = batch_axis
        self._model_file = model_file
        self._device = device
        self._config = config
        self.dynamic = CompiledModel(core.compile_model(str(model_file), device, config), names)
        self._static: dict[ShapeKey, CompiledModel] = {}
        self._runs: dict[ShapeKey, int] = {}
        self._planned: set[ShapeKey] = set()
        """Shapes compiled or being compiled (a shape released meanwhile is not kept)."""
        self._lock = threading.Lock()
        self._compiler = ThreadPoolExecutor(1, thread_name_prefix="openvino-compile")

    @property
    def requests_wanted(self) -> int:
        return self.dynamic.requests_wanted

    @property
    def static_shapes(self) -> list[ShapeKey]:
        return list(self._static)

    def infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        key = shape_key(feeds)
        model = self._static.get(key)
        if model is None:
            self._count(key)
            model = self.dynamic
        return model.infer(feeds)

    def compile_static(self, key: ShapeKey) -> None:
        """A model for the shapes ``key`` (blocking); then runs of that shape use it."""
        model = self._core.read_model(str(self._model_file))
        model.reshape(dict(key))
        compiled = CompiledModel(self._core.compile_model(model, self._device, self._config), self.names)
        with self._lock:
            if key in self._planned:
                self._static[key] = compiled

    def settle(self, feeds: dict[str, Any]) -> None:
        """Compile for the shapes of ``feeds`` now (blocking), if they have no model yet."""
        key = shape_key(feeds)
        if key not in self._static:
            with self._lock:
                self._planned.add(key)
            self.compile_static(key)

    def _count(self, key: ShapeKey) -> None:
        """One more run of ``key`` on the dynamic model; its ``STATIC_AFTER``-th has it compiled."""
        with self._lock:
            runs = self._runs[key] = self._runs.get(key, 0) + 1
            wanted = runs == STATIC_AFTER and len(self._planned) < MOST_STATIC
            if wanted:
                self._planned.add(key)
            if len(self._runs) > RUNS_KEPT:  # shapes seen once or twice: a bound, not a history
                self._runs = {k: n for k, n in self._runs.items() if n >= STATIC_AFTER}
        if wanted:
            self._compiler.submit(self.compile_static, key).add_done_callback(_log_compile_failure)

    def release(self, batch: int) -> None:
        """Batches of more than ``batch`` stopped running: their static models go (each holds
        its own buffers: about 270 MB for 8 text-detector frames) and the dynamic model frees
        the buffers it grew for them; their shapes count their runs from zero again."""
        with self._lock:
            for key in [key for key in self._planned | set(self._runs) if self._batch_of(key) > batch]:
                self._runs.pop(key, None)
                self._static.pop(key, None)
                self._planned.discard(key)
        self.dynamic.release_memory()
        return_freed_memory()

    def _batch_of(self, key: ShapeKey) -> int:
        if self._batch_axis is None:
            return 0
        name, axis = self._batch_axis
        return next((shape[axis] for input_name, shape in key if input_name == name), 0)

    def close(self) -> None:
        self._compiler.shutdown(wait=False, cancel_futures=True)


def batch_axis(card: ModelCard) -> tuple[str, int] | None:
    """The data input's name and its batch axis, if the card names one."""
    spec = card.data_inputs[0]
    return (spec.name, spec.shape.index("batch")) if "batch" in spec.shape else None


def shape_key(feeds: dict[str, Any]) -> ShapeKey:
    return tuple((name, tuple(np.shape(value))) for name, value in feeds.items())


def _log_compile_failure(future: Future[None]) -> None:
    exc = future.exception()
    if exc is not None:  # the dynamic model still runs that shape
        log.warning("OpenVINO could not compile a static shape: %s", exc)


@register_engine("openvino", OpenVinoOptions)
class OpenVinoEngine(Engine):
    def __init__(self, card: ModelCard, options: OpenVinoOptions, settings: RunSettings | None = None) -> None:
        super().__init__(card)
        openvino = openvino_module()
        self._core = openvino.Core()
        self.options = options
        self.version = str(openvino.__version__)
        self._capabilities = device_capabilities(self._core, options.device)
        path = model_path(card)
        if options.precision == "f32":
            self.precision: Precision = "f32"
            model_file = path
        else:
            from ..precision import choose_precision

            choice = choose_precision(self, options.precision, path)
            self.precision, model_file = choice.precision, choice.model_file
        self._model = self.compile(model_file, self.precision)
        log.info(
            "model %s compiled by OpenVINO %s for %s, %s, %s hint, %d infer request(s)",
            card.name,
            self.version.split("-")[0],
            options.device,
            self.precision,
            options.hint,
            self._model.requests_wanted,
        )

    @property
    def tensor_names(self) -> set[str]:
        return {spec.name for spec in (*self.card.inputs, *self.card.outputs)}

    @property
    def runtime(self) -> str:
        return f"openvino {self.version} {self.options.device} {','.join(self._capabilities)}"

    def unsupported(self, precision: Precision) -> str | None:
        return precision_unsupported(precision, self._capabilities)

    def compile(self, model_file: Path, precision: Precision) -> ShapeModels:
        """``model_file`` compiled for this engine's device at ``precision``."""
        problem = self.unsupported(precision)
        if problem is not None:
            raise ModelError(f"model {self.card.name!r}: precision {precision}: {problem}")
        try:
            config = compile_config(self.options, precision)
            return ShapeModels(
                self._core, model_file, self.options.device, config, self.tensor_names, batch_axis(self.card)
            )
        except RuntimeError as exc:  # OpenVINO's errors for a file or device it cannot take
            log.debug("OpenVINO cannot compile %s: %s", model_file, exc)
            raise ModelError(
                f"model {self.card.name!r}: OpenVINO cannot compile {model_file}: {last_line(exc)}"
            ) from None

    @property
    def description(self) -> str:
        return f"openvino[{self.options.device},{self.precision}]"

    @property
    def max_in_flight(self) -> int:
        return self._model.requests_wanted

    def metadata(self) -> EngineMetadata:
        compiled = self._model.dynamic.compiled
        inputs = [port_info(port, self.tensor_names) for port in compiled.inputs]
        outputs = [port_info(port, self.tensor_names) for port in compiled.outputs]
        return EngineMetadata(inputs, outputs, max_batch=fixed_batch(self.card, inputs))

    def infer(self, feeds: dict[str, Any]) -> dict[str, Any]:
        return self._model.infer(feeds)

    def release_memory(self, batch: int) -> None:
        self._model.release(batch)

    @property
    def static_shapes(self) -> list[ShapeKey]:
        """The input shapes with a model compiled for them (the rest run on the dynamic one)."""
        return self._model.static_shapes

    def settle(self, feeds: dict[str, Any]) -> None:
        """Compile for inputs shaped like ``feeds`` now (blocking), instead of after a few runs."""
        self._model.settle(feeds)

    async def close(self) -> None:
        self.close_now()

    def close_now(self) -> None:
        """Stop compiling in the background (a model set aside)."""
        self._model.close()


def port_name(port: Any, names: set[str]) -> str:
    """The port's name the card uses: a port can have several (a converted model's output is
    named by the layer that makes it and by the name it was given), and ``get_any_name`` picks one."""
    return str(next(iter(sorted(set(port.get_names()) & names)), port.get_any_name()))


def port_info(port: Any, names: set[str]) -> TensorInfo:
    """An OpenVINO port as a ``TensorInfo`` under the card's name for it: a dynamic axis as ``?``."""
    shape: list[int | str] = [dim.get_length() if dim.is_static else "?" for dim in port.get_partial_shape()]
    return TensorInfo(port_name(port, names), str(np.dtype(port.get_element_type().to_dtype())), shape)
