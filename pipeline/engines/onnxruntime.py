"""ONNX Runtime engine: checks the file against its card and picks providers from what is installed."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnxruntime as ort
from pydantic import Field

from .. import capabilities
from ..errors import ModelError
from ..modelcard import ModelCard
from ..modelstore import cache_dir, model_path
from .base import Engine, EngineMetadata, EngineOptions, RunSettings, TensorInfo, is_contiguous, return_freed_memory
from .registry import register_engine

log = logging.getLogger("streamgraph.engine.onnxruntime")

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
"""Best first, of those this onnxruntime build has. ORT's TensorRT provider only when asked for by
name: it builds a TensorRT engine at every start (we keep its cache), and where TensorRT is missing
it logs an error before falling back; ``engine: tensorrt`` is our own, cached TensorRT engine."""

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


class OnnxRuntimeOptions(EngineOptions):
    providers: list[str] | None = None
    """Execution providers, in order; default: CUDA where it loads, else the CPU. A GPU provider
    named here that does not load is an error, never a quiet CPU run."""
    intra_op_threads: int = Field(default=0, ge=0)
    """Threads per model run; 0 lets ONNX Runtime use every core."""
    tf32: bool = True
    """CUDA: float32 matrix products in TF32 (faster on Ampere and later; outputs move by about 1e-2)."""
    fp16: bool = False
    """ONNX Runtime's TensorRT provider (when named): half precision where that is faster."""


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
}


def choose_providers(requested: tuple[str, ...] | None, available: list[str]) -> list[str]:
    """The providers to use, in order: the requested ones (all must exist), else the best installed."""
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ModelError(
                f"ONNX Runtime providers {', '.join(missing)} are not available; this build has {', '.join(available)}"
            )
        return list(requested)
    chosen = [p for p in PREFERRED_PROVIDERS if p in available]
    return chosen or list(available)


def provider_options(providers: list[str], options: OnnxRuntimeOptions) -> list[dict[str, Any]]:
    """Each provider's options: TF32 as asked on CUDA; TensorRT with its engine and timing caches
    on (without them it rebuilds every engine at every start) and fp16 as asked."""
    chosen: list[dict[str, Any]] = []
    for provider in providers:
        if provider == "CUDAExecutionProvider":
            chosen.append({"device_id": "0", "use_tf32": "1" if options.tf32 else "0"})
        elif provider == "TensorrtExecutionProvider":
            cache = str(cache_dir() / "onnxruntime-tensorrt")
            chosen.append(
                {
                    "device_id": "0",
                    "trt_engine_cache_enable": "True",
                    "trt_engine_cache_path": cache,
                    "trt_timing_cache_enable": "True",
                    "trt_timing_cache_path": cache,
                    "trt_fp16_enable": "True" if options.fp16 else "False",
                }
            )
        else:
            chosen.append({})
    return chosen


def check_loaded(card: ModelCard, requested: list[str], loaded: list[str], *, asked: bool) -> list[str]:
    """ONNX Runtime drops a GPU provider it cannot load (cuBLAS or cuDNN missing) with a warning
    and runs on the CPU. A provider asked for by name that did not load is a ``ModelError``
    naming it and the library at fault; one chosen by default is logged and left out."""
    for provider in requested:
        if provider in loaded or provider not in GPU_PROVIDERS:
            continue
        why = capabilities.missing_library(provider)
        if asked:
            raise ModelError(
                f"model {card.name!r}: ONNX Runtime could not load {provider} ({why}); not running it on the "
                "CPU instead. `streamgraph doctor` shows what this machine can run"
            )
        log.warning("model %s: %s did not load (%s); running on %s", card.name, provider, why, ", ".join(loaded))
    return loaded


@register_engine("onnxruntime", OnnxRuntimeOptions)
class OnnxRuntimeEngine(Engine):
    def __init__(
        self,
        card: ModelCard,
        options: OnnxRuntimeOptions,
        settings: RunSettings | None = None,
        *,
        providers_named: bool | None = None,
    ) -> None:
        """``providers_named``: whether ``options.providers`` were named by the user (a GPU one
        that does not load is then an error) or chosen for them (``auto``: logged, left out);
        by default, whether there are any."""
        super().__init__(card)
        settings = settings or RunSettings()
        path = model_path(card)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = 1
        try:
            requested = tuple(options.providers) if options.providers else None
            providers = choose_providers(requested, ort.get_available_providers())
        except ModelError as exc:
            raise ModelError(
                f"model {card.name!r}: {exc} ({capabilities.onnxruntime_package()}: pip install -e '.[gpu]' "
                "for CUDA; `streamgraph doctor` shows what this machine can run)"
            ) from None
        if any(p in GPU_PROVIDERS for p in providers):
            capabilities.preload_cuda_libraries()
        try:
            self._session = ort.InferenceSession(
                str(path),
                session_options,
                providers=providers,
                provider_options=provider_options(providers, options),
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelError(f"model {card.name!r}: ONNX Runtime cannot load {path}: {exc}") from None
        self.providers = check_loaded(
            card,
            providers,
            self._session.get_providers(),
            asked=bool(options.providers) if providers_named is None else providers_named,
        )
        self._output_names = [spec.name for spec in card.outputs]
        self._on_cuda = self.providers[0] in GPU_PROVIDERS
        self._device_outputs = settings.device_outputs and self._on_cuda
        self._shrink_next_run = False
        log.info("model %s loaded with %s", card.name, ", ".join(self.providers))

    @property
    def description(self) -> str:
        return f"onnxruntime[{self.providers[0]}]"

    @property
    def on_device(self) -> bool:
        return self._on_cuda

    def metadata(self) -> EngineMetadata:
        inputs, outputs = (
            [tensor_info(node) for node in nodes] for nodes in (self._session.get_inputs(), self._session.get_outputs())
        )
        return EngineMetadata(inputs, outputs, max_batch=fixed_batch(self.card, inputs))

    def infer(self, feeds: dict[str, Any]) -> dict[str, Any]:
        if self._on_cuda:
            return self._infer_bound(feeds)
        shrink, self._shrink_next_run = self._shrink_next_run, False
        run_options = None
        if shrink:
            run_options = ort.RunOptions()
            run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        host_feeds = {name: self._on_host(value) for name, value in feeds.items()}
        outputs = self._session.run(self._output_names, host_feeds, run_options)
        if shrink:
            return_freed_memory()
        return dict(zip(self._output_names, outputs, strict=True))

    def release_memory(self, batch: int) -> None:
        """The CPU arena keeps the most a run ever took (a batch of 8 text-detector frames: about
        600 MB more than one): the next run hands its free chunks back. Only then, not after
        every run: shrinking each run costs about a fifth of the throughput (the next big run
        takes its memory from the system again)."""
        self._shrink_next_run = not self._on_cuda

    def _on_host(self, value: Any) -> Any:
        """A device array (NVDEC frames prepared on the GPU, fed to a model on the CPU) copied to
        the host, and counted: ``session.run`` cannot read device memory."""
        if not hasattr(value, "__cuda_array_interface__"):
            return value
        import cupy

        self.device_copies += 1
        return cupy.asnumpy(value)

    def _infer_bound(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """On CUDA, with I/O binding: device inputs (``__cuda_array_interface__``) are bound where
        they are, outputs are left on the device and handed out as CuPy arrays, or copied to the
        host once when ``device_outputs`` is off. A device input must be complete when handed over
        (producers synchronize their stream): ORT computes on a stream of its own."""
        binding = self._session.io_binding()
        keep_alive = []  # contiguous copies must outlive the run
        for name, value in feeds.items():
            interface = getattr(value, "__cuda_array_interface__", None)
            if interface is None:
                self.host_copies += 1
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
                continue
            if not is_contiguous(interface):
                value = contiguous_on_device(value)  # ORT reads a dense buffer from the pointer
                keep_alive.append(value)
                interface = value.__cuda_array_interface__
            binding.bind_input(
                name,
                device_type="cuda",
                device_id=0,
                element_type=np.dtype(interface["typestr"]),
                shape=tuple(interface["shape"]),
                buffer_ptr=interface["data"][0],
            )
        for name in self._output_names:
            binding.bind_output(name, "cuda")
        self._session.run_with_iobinding(binding)
        del keep_alive
        values = binding.get_outputs()
        if not self._device_outputs:
            return {name: value.numpy() for name, value in zip(self._output_names, values, strict=True)}
        return {name: _as_cupy(value) for name, value in zip(self._output_names, values, strict=True)}


def contiguous_on_device(value: Any) -> Any:
    """A C-contiguous device copy of ``value``, complete when returned."""
    import cupy

    dense = cupy.ascontiguousarray(cupy.asarray(value))
    cupy.cuda.get_current_stream().synchronize()
    return dense


def _as_cupy(value: Any) -> Any:
    """A CUDA ``OrtValue`` as a CuPy array over the same memory (the array keeps the value alive)."""
    import cupy

    dtype = np.dtype(_ORT_TYPES.get(value.data_type(), "float32"))
    shape = tuple(value.shape())
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    memory = cupy.cuda.UnownedMemory(value.data_ptr(), size, value)
    return cupy.ndarray(shape, dtype=dtype, memptr=cupy.cuda.MemoryPointer(memory, 0))


def fixed_batch(card: ModelCard, inputs: list[TensorInfo]) -> int | None:
    """The batch size the file fixes, if it does: its size of the axis the card calls ``batch``
    in the data input (None where the card has no batch axis or the file leaves it dynamic)."""
    spec = card.data_inputs[0]
    node = next((i for i in inputs if i.name == spec.name), None)
    if node is None or "batch" not in spec.shape or len(node.shape) != len(spec.shape):
        return None  # a mismatch check_card names
    size = node.shape[spec.shape.index("batch")]
    return size if isinstance(size, int) else None


def tensor_info(node: Any) -> TensorInfo:
    """An ONNX Runtime ``NodeArg`` as a ``TensorInfo``: a dynamic axis by its name in the file."""
    shape: list[int | str] = [dim if isinstance(dim, int) else str(dim or "?") for dim in node.shape]
    return TensorInfo(node.name, _ORT_TYPES.get(node.type, node.type), shape)
