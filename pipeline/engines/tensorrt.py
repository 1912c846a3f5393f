"""TensorRT 10 engine: built once from the model card's ONNX file, cached on disk, run on device buffers.

The build uses one optimization profile: the ``batch`` axis from 1 to the stage's ``max_size``
(optimized for ``max_size``); other dynamic axes (``height``, ``width``) from the card's
``multiple_of`` up to its preprocess size. FP16 when asked. A timing cache and the serialized
engine are kept under ``<cache>/tensorrt/``; the engine file's name is a hash of everything that
makes an engine valid (ONNX sha256, profile, precision, GPU name, TensorRT version), and a file
that fails to deserialize is rebuilt, never trusted. ``cache_hit`` says whether this start reused
one.

Inputs may be any buffer exposing ``__cuda_array_interface__`` (CuPy, torch, pycuda, a decoder's
surface): their device pointers are handed to TensorRT as they are. Host arrays are copied to the
device first, and counted (``host_copies``), so a test can show that a GPU pipeline makes none.
Outputs are CuPy arrays on the device, or host numpy arrays when ``device_outputs`` is off.

Only imported when TensorRT is chosen: ``tensorrt``, ``cuda-python`` and ``cupy`` are not needed
anywhere else. Written against the documented TensorRT 10 Python API; see the README for which
GPU paths were verified on real hardware.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..modelcard import ModelCard, TensorSpec
from ..modelstore import cache_dir, model_path
from .base import Engine, EngineOptions

log = logging.getLogger("streamgraph.engine.tensorrt")

Shape = tuple[int, ...]
ProfileShapes = dict[str, tuple[Shape, Shape, Shape]]
"""input name -> (min, opt, max) shape."""

WORKSPACE_BYTES = 1 << 30


def profile_shapes(card: ModelCard, max_batch: int) -> ProfileShapes:
    """The optimization profile's (min, opt, max) shape of every input of ``card``."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    shapes: ProfileShapes = {}
    for spec in card.inputs:
        low: list[int] = []
        high: list[int] = []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                low.append(dim)
                high.append(dim)
            elif dim == "batch":
                low.append(1)
                high.append(max_batch)
            else:
                size = _preprocess_size(card, spec, axis, dim)
                step = card.preprocess.multiple_of if card.preprocess else 1
                low.append(min(step, size))
                high.append(size)
        shapes[spec.name] = (tuple(low), tuple(high), tuple(high))
    return shapes


def _preprocess_size(card: ModelCard, spec: TensorSpec, axis: int, dim: str) -> int:
    if card.preprocess is not None and dim in ("height", "width"):
        height, width = card.preprocess.size
        return height if dim == "height" else width
    raise ModelError(
        f"model {card.name!r}: input {spec.name!r} axis {axis} ({dim!r}) is dynamic and not batch, height or "
        "width: TensorRT needs its range, which the card does not give"
    )


def engine_key(*, onnx_sha256: str, shapes: ProfileShapes, fp16: bool, gpu: str, trt_version: str) -> str:
    """A name for the engine file that changes whenever the engine would be different."""
    facts = {"onnx": onnx_sha256, "shapes": shapes, "fp16": fp16, "gpu": gpu, "tensorrt": trt_version}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
        handle.write(data)
    os.replace(handle.name, path)


class TensorRtEngine(Engine):
    def __init__(self, card: ModelCard, options: EngineOptions) -> None:
        super().__init__(card)
        import cupy
        import tensorrt as trt

        from .cuda import cuda_check, cudart

        self._trt = trt
        self._cupy = cupy
        self._device_outputs = options.device_outputs
        self.host_copies = 0
        """Host arrays copied to the device for ``infer`` (0 in a zero-copy pipeline)."""
        self._logger = trt.Logger(trt.Logger.WARNING)
        _, props = cuda_check(cudart.cudaGetDeviceProperties(0))
        self.gpu = props.name.decode(errors="replace").strip("\0")
        self.shapes = profile_shapes(card, options.max_batch)
        key = engine_key(
            onnx_sha256=card.sha256, shapes=self.shapes, fp16=options.fp16, gpu=self.gpu, trt_version=trt.__version__
        )
        self.engine_path = cache_dir() / "tensorrt" / f"{card.name}-{key}.engine"
        self._timing_cache_path = cache_dir() / "tensorrt" / f"timing-{trt.__version__}.cache"
        runtime = trt.Runtime(self._logger)
        self.cache_hit = False
        engine = self._load_cached(runtime)
        if engine is None:
            serialized = self._build(model_path(card), options.fp16)
            engine = runtime.deserialize_cuda_engine(serialized)
            if engine is None:
                raise ModelError(f"model {card.name!r}: TensorRT could not load the engine it just built")
            write_atomically(self.engine_path, bytes(serialized))
        self._engine = engine
        self._context = engine.create_execution_context()
        _, self._stream = cuda_check(cudart.cudaStreamCreate())
        self._cudart = cudart
        self._cuda_check = cuda_check
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._input_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        expected = sorted(spec.name for spec in card.inputs), sorted(spec.name for spec in card.outputs)
        if (sorted(self._input_names), sorted(self._output_names)) != expected:
            raise ModelError(f"model {card.name!r}: the engine's tensors {names} are not the card's {expected}")
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

    def _build(self, onnx_path: Path, fp16: bool) -> Any:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelError(f"model {self.card.name!r}: TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in self.shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
        timing = self._timing_cache_path.read_bytes() if self._timing_cache_path.is_file() else b""
        cache = config.create_timing_cache(timing)
        config.set_timing_cache(cache, ignore_mismatch=True)  # a mismatched cache is ignored, not fatal
        log.info("building a TensorRT engine for %s (fp16=%s): this takes a while, once", self.card.name, fp16)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ModelError(f"model {self.card.name!r}: TensorRT failed to build an engine (see its log above)")
        write_atomically(self._timing_cache_path, bytes(config.get_timing_cache().serialize()))
        return serialized

    def infer(self, feeds: dict[str, Any]) -> dict[str, Any]:
        cupy = self._cupy
        keep_alive = []  # device copies of host inputs must outlive the run
        for name in self._input_names:
            array = feeds[name]
            if not hasattr(array, "__cuda_array_interface__"):
                array = cupy.asarray(array)
                self.host_copies += 1
                keep_alive.append(array)
            interface = array.__cuda_array_interface__
            if interface.get("strides") not in (None, _contiguous_strides(interface)):
                raise ValueError(f"input {name!r}: TensorRT needs a C-contiguous buffer")
            self._context.set_input_shape(name, tuple(interface["shape"]))
            self._context.set_tensor_address(name, interface["data"][0])
        outputs = {}
        for name in self._output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            outputs[name] = cupy.empty(shape, dtype=self._dtypes[name])
            self._context.set_tensor_address(name, outputs[name].data.ptr)
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeError(f"model {self.card.name!r}: TensorRT execution failed")
        self._cuda_check(self._cudart.cudaStreamSynchronize(self._stream))
        del keep_alive
        if self._device_outputs:
            return outputs
        return {name: value.get() for name, value in outputs.items()}


def _contiguous_strides(interface: dict[str, Any]) -> tuple[int, ...]:
    import numpy as np

    itemsize = np.dtype(interface["typestr"]).itemsize
    shape = interface["shape"]
    strides = []
    step = itemsize
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))
