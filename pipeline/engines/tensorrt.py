"""TensorRT 10 engine: built once from the model card's ONNX file, cached on disk, run on device buffers.

Optimization profile (one): TensorRT picks each layer's kernels for the profile's ``opt`` shape and
runs every shape between ``min`` and ``max`` with them.

* ``batch``: 1 to the stage's largest batch (``RunSettings.max_batch``: ``max_size``, or
  ``size_limit`` for ``auto``), tuned for ``max(1, max_batch // 2)``. Full batches are where
  throughput is decided (a stage that falls behind fills them), so the tuned shape stays within a
  factor of two of them; half-way brings it closer to the single-frame batches of lightly loaded
  live runs than tuning for the largest batch would. ``max_batch`` 1 to 3 (1 is the default) is
  tuned for exactly 1. Two profiles (one per end) would need a profile switch between batches and
  twice the build time; not worth it before a GPU measurement says so.
* ``height`` / ``width``: from ``IMAGE_AXIS_FLOOR`` (32 px, rounded up to the card's
  ``multiple_of``, never above the card's size) to the card's preprocess size, tuned for the
  card's size (what ``prepare`` makes by default and the warm-up runs). Every real input meets the
  floor: detector sizes are multiples of 32 (``multiple_of``), and ``text_crops`` pads each
  recognizer crop to a multiple of its ``width_bucket`` (32 by default), so the narrowest is 32 px.
  A narrower ``width_bucket`` or ``max_width`` makes crops outside the profile, refused by
  ``infer`` with the profile's range; 1-px-wide inputs are not worth tuning kernels around.

Precision: FP32, with TF32 matrix products unless ``TensorRtOptions.tf32`` is off (parity runs);
FP16 when asked, which needs TensorRT 10 (11 removed ``BuilderFlag.FP16`` for strongly typed
networks) and is refused on any other version; on TensorRT 11 an FP32 engine is built with a
warning (written to the 10 API, unverified on 11). A timing cache and the serialized engine are
kept under ``<cache>/tensorrt/``; the engine file's name is a hash of everything that makes an
engine valid (ONNX sha256, profile, precision, TF32, GPU name, TensorRT version), and a file that
fails to deserialize is rebuilt, never trusted. ``cache_hit`` says whether this start reused one.

Inputs may be any buffer exposing ``__cuda_array_interface__`` (CuPy, torch, pycuda, a decoder's
surface): their device pointers are handed to TensorRT as they are (a strided one is first made
dense on the device, not counted). Host arrays are copied to the device first, and counted
(``host_copies``), so a test can show that a GPU pipeline makes none.
Outputs are CuPy arrays on the device, or host numpy arrays when ``device_outputs`` is off.

Only imported when TensorRT is chosen: ``tensorrt``, ``cuda-python`` and ``cupy`` are not needed
anywhere else. Written against the documented TensorRT 10 Python API; see the README for which
GPU paths were verified on real hardware.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..modelcard import ModelCard, TensorSpec
from ..modelstore import cache_dir, model_path
from .base import Engine, EngineMetadata, EngineOptions, RunSettings, TensorInfo, is_contiguous
from .registry import register_engine

log = logging.getLogger("streamgraph.engine.tensorrt")

Shape = tuple[int, ...]
ProfileShapes = dict[str, tuple[Shape, Shape, Shape]]
"""input name -> (min, opt, max) shape."""

WORKSPACE_BYTES = 1 << 30

IMAGE_AXIS_FLOOR = 32
"""Smallest height or width the profile takes (before rounding up to the card's ``multiple_of``)."""

TENSORRT_MAJOR = 10
"""The TensorRT major version this engine is written to."""

TENSORRT_FIX = "pip install 'tensorrt-cu13>=10.13,<11'"


def profile_shapes(card: ModelCard, max_batch: int) -> ProfileShapes:
    """The optimization profile's (min, opt, max) shape of every input of ``card`` (see the module
    docstring for why these ranges)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    shapes: ProfileShapes = {}
    for spec in card.inputs:
        ranges = [_axis_range(card, spec, axis, dim, max_batch) for axis, dim in enumerate(spec.shape)]
        low = tuple(r[0] for r in ranges)
        opt = tuple(r[1] for r in ranges)
        high = tuple(r[2] for r in ranges)
        shapes[spec.name] = (low, opt, high)
    return shapes


def typical_batch(max_batch: int) -> int:
    """The batch the profile is tuned for: half the largest, so full batches are within a factor of two."""
    return max(1, max_batch // 2)


def smallest_image_axis(size: int, multiple_of: int) -> int:
    """``IMAGE_AXIS_FLOOR`` rounded up to a multiple of ``multiple_of``, at most ``size``."""
    return min(size, math.ceil(IMAGE_AXIS_FLOOR / multiple_of) * multiple_of)


def _axis_range(card: ModelCard, spec: TensorSpec, axis: int, dim: int | str, max_batch: int) -> tuple[int, int, int]:
    """(min, opt, max) of one axis."""
    if isinstance(dim, int):
        return dim, dim, dim
    if dim == "batch":
        return 1, typical_batch(max_batch), max_batch
    size = _preprocess_size(card, spec, axis, dim)
    multiple_of = card.preprocess.multiple_of if card.preprocess else 1
    return smallest_image_axis(size, multiple_of), size, size


def _preprocess_size(card: ModelCard, spec: TensorSpec, axis: int, dim: str) -> int:
    if card.preprocess is not None and dim in ("height", "width"):
        height, width = card.preprocess.size
        return height if dim == "height" else width
    raise ModelError(
        f"model {card.name!r}: input {spec.name!r} axis {axis} ({dim!r}) is dynamic and not batch, height or "
        "width: TensorRT needs its range, which the card does not give"
    )


def engine_key(*, onnx_sha256: str, shapes: ProfileShapes, fp16: bool, tf32: bool, gpu: str, trt_version: str) -> str:
    """A name for the engine file that changes whenever the engine would be different."""
    facts = {
        "onnx": onnx_sha256,
        "shapes": shapes,
        "fp16": fp16,
        "tf32": tf32,  # a TF32 engine must never be reused for a parity run that turned it off
        "gpu": gpu,
        "tensorrt": trt_version,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def tensorrt_major(version: str) -> int | None:
    """The major version in ``"10.13.3.9"``, or None when it does not start with one."""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def check_tensorrt_version(trt: Any, card_name: str, *, fp16: bool) -> None:
    """Refuse what this engine cannot build with the installed ``tensorrt`` module; warn where it is
    unverified. FP16 needs ``BuilderFlag.FP16``, which only TensorRT 10 has here (11 removed it);
    TensorRT before 10 lacks the API used; FP32 on TensorRT 11 goes on with a warning."""
    version = str(getattr(trt, "__version__", "unknown"))
    major = tensorrt_major(version)
    if fp16 and (major != TENSORRT_MAJOR or not hasattr(trt.BuilderFlag, "FP16")):
        raise ModelError(
            f"model {card_name!r}: fp16 needs TensorRT {TENSORRT_MAJOR}'s BuilderFlag.FP16, which the installed "
            f"TensorRT {version} does not have (TensorRT 11 removed it): run `{TENSORRT_FIX}`, or set fp16: false"
        )
    if major is not None and major < TENSORRT_MAJOR:
        raise ModelError(
            f"model {card_name!r}: this engine is written to the TensorRT {TENSORRT_MAJOR} API; "
            f"the installed TensorRT {version} is older: run `{TENSORRT_FIX}`"
        )
    if major != TENSORRT_MAJOR:
        log.warning(
            "model %s: TensorRT %s: this engine is written to the TensorRT %d API and unverified on this "
            "version; if it misbehaves, run `%s`",
            card_name,
            version,
            TENSORRT_MAJOR,
            TENSORRT_FIX,
        )


def set_input_shape(context: Any, name: str, shape: Shape, profile: tuple[Shape, Shape, Shape]) -> None:
    """Give the execution context an input's shape. TensorRT only returns False for a shape outside
    the profile (and logs it); running anyway would read or write past the buffers."""
    if not context.set_input_shape(name, shape):
        low, _, high = profile
        raise ValueError(
            f"input {name!r}: shape {shape} is outside the TensorRT engine's optimization profile "
            f"(min {low}, max {high}; built from the stage's batch max_size and the card's preprocess size)"
        )


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
        handle.write(data)
    os.replace(handle.name, path)


class TensorRtOptions(EngineOptions):
    fp16: bool = False
    """Half precision where that is faster (TensorRT 10 only)."""
    tf32: bool = True
    """float32 matrix products in TF32 (faster on Ampere and later; outputs move by about 1e-2)."""


@register_engine("tensorrt", TensorRtOptions)
class TensorRtEngine(Engine):
    def __init__(self, card: ModelCard, options: TensorRtOptions, settings: RunSettings | None = None) -> None:
        super().__init__(card)  # first: it sets host_copies and device_copies, counted from here on
        settings = settings or RunSettings()
        import cupy
        import tensorrt as trt

        check_tensorrt_version(trt, card.name, fp16=options.fp16)

        from .cuda import cuda_check, cudart

        self._trt = trt
        self._cupy = cupy
        self._device_outputs = settings.device_outputs
        self._logger = trt.Logger(trt.Logger.WARNING)
        _, props = cuda_check(cudart.cudaGetDeviceProperties(0))
        self.gpu = props.name.decode(errors="replace").strip("\0")
        self.shapes = profile_shapes(card, settings.max_batch)
        self._max_batch = settings.max_batch
        key = engine_key(
            onnx_sha256=card.sha256,
            shapes=self.shapes,
            fp16=options.fp16,
            tf32=options.tf32,
            gpu=self.gpu,
            trt_version=trt.__version__,
        )
        self.engine_path = cache_dir() / "tensorrt" / f"{card.name}-{key}.engine"
        self._timing_cache_path = cache_dir() / "tensorrt" / f"timing-{trt.__version__}.cache"
        runtime = trt.Runtime(self._logger)
        self.cache_hit = False
        engine = self._load_cached(runtime)
        if engine is None:
            serialized = self._build(model_path(card), fp16=options.fp16, tf32=options.tf32)
            engine = runtime.deserialize_cuda_engine(serialized)
            if engine is None:
                raise ModelError(f"model {card.name!r}: TensorRT could not load the engine it just built")
            write_atomically(self.engine_path, bytes(serialized))
        self._engine = engine
        self._context = engine.create_execution_context()
        _, self._stream = cuda_check(cudart.cudaStreamCreate())
        # The same stream seen by CuPy, so it can wait for work queued on CuPy's current stream.
        self._stream_for_cupy = cupy.cuda.ExternalStream(int(self._stream))
        self._cudart = cudart
        self._cuda_check = cuda_check
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {spec.name: spec.dtype for spec in card.inputs + card.outputs}
        log.info(
            "model %s on TensorRT %s (%s), engine %s (%s)",
            card.name,
            trt.__version__,
            self.gpu,
            self.engine_path.name,
            "cached" if self.cache_hit else "built",
        )

    @property
    def description(self) -> str:
        return f"tensorrt[{self.gpu}]"

    @property
    def on_device(self) -> bool:
        return True

    def metadata(self) -> EngineMetadata:
        """The built engine's tensors (an axis of -1 is dynamic, within the profile) and its
        profile's largest batch."""
        import numpy as np

        def info(name: str) -> TensorInfo:
            dtype = np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name))).name
            shape: list[int | str] = [d if d >= 0 else "dynamic" for d in self._engine.get_tensor_shape(name)]
            return TensorInfo(name, dtype, shape)

        return EngineMetadata(
            [info(n) for n in self._input_names], [info(n) for n in self._output_names], self._max_batch
        )

    def _load_cached(self, runtime: Any) -> Any:
        if not self.engine_path.is_file():
            return None
        try:
            engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        except Exception as exc:  # a truncated or foreign file: TensorRT's errors are untyped
            log.warning("engine cache %s unreadable (%s): rebuilding", self.engine_path, exc)
            engine = None
        if engine is None:
            log.warning("engine cache %s is stale or corrupt: rebuilding", self.engine_path)
            self.engine_path.unlink(missing_ok=True)
            return None
        self.cache_hit = True
        return engine

    def _build(self, onnx_path: Path, *, fp16: bool, tf32: bool) -> Any:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelError(f"model {self.card.name!r}: TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if fp16:  # check_tensorrt_version made sure this TensorRT has the flag
            config.set_flag(trt.BuilderFlag.FP16)
        if not tf32:  # TensorRT sets TF32 by default; it moves FP32 outputs by about 1e-2
            config.clear_flag(trt.BuilderFlag.TF32)
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in self.shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
        timing = self._timing_cache_path.read_bytes() if self._timing_cache_path.is_file() else b""
        cache = config.create_timing_cache(timing)
        config.set_timing_cache(cache, ignore_mismatch=True)  # a mismatched cache is ignored, not fatal
        log.info(
            "building a TensorRT engine for %s (fp16=%s, tf32=%s): this takes a while, once", self.card.name, fp16, tf32
        )
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ModelError(f"model {self.card.name!r}: TensorRT failed to build an engine (see its log above)")
        write_atomically(self._timing_cache_path, bytes(config.get_timing_cache().serialize()))
        return serialized

    def infer(self, feeds: dict[str, Any]) -> dict[str, Any]:
        # Ordering: a device input is complete when handed over (its producer synchronized its
        # stream first), so TensorRT may read it from its own stream at once. Host copies and
        # output allocations go through CuPy's current stream: the TensorRT stream waits for that
        # stream (an event, no host wait), so a copy is complete before it is read, and memory
        # the pool hands out again is no longer in use there when TensorRT writes it. Outputs are
        # read only after the TensorRT stream is synchronized.
        cupy = self._cupy
        keep_alive = []  # device copies of inputs must outlive the run
        for name in self._input_names:
            array = self._on_device(name, feeds[name])
            keep_alive.append(array)
            interface = array.__cuda_array_interface__
            set_input_shape(self._context, name, tuple(interface["shape"]), self.shapes[name])
            self._context.set_tensor_address(name, interface["data"][0])
        outputs = {}
        for name in self._output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            outputs[name] = cupy.empty(shape, dtype=self._dtypes[name])
            self._context.set_tensor_address(name, outputs[name].data.ptr)
        self._stream_for_cupy.wait_event(cupy.cuda.get_current_stream().record())
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeError(f"model {self.card.name!r}: TensorRT execution failed")
        self._cuda_check(self._cudart.cudaStreamSynchronize(self._stream))
        del keep_alive
        if self._device_outputs:
            return outputs
        return {name: value.get() for name, value in outputs.items()}

    def _on_device(self, name: str, array: Any) -> Any:
        """``array`` as a C-contiguous device buffer of the card's dtype: a host array is copied
        there (and counted), a strided device array made dense (not counted)."""
        if not hasattr(array, "__cuda_array_interface__"):
            self.host_copies += 1
            array = self._cupy.asarray(array, order="C")
        elif not is_contiguous(array.__cuda_array_interface__):
            # TensorRT reads a dense buffer from the pointer; the copy runs on CuPy's current
            # stream, which the TensorRT stream waits for.
            array = self._cupy.ascontiguousarray(self._cupy.asarray(array))
        dtype = np.dtype(array.__cuda_array_interface__["typestr"])
        if dtype != np.dtype(self._dtypes[name]):  # TensorRT would read the bytes as its own dtype
            raise ValueError(f"input {name!r}: dtype {dtype}, the model takes {self._dtypes[name]}")
        return array
