"""What this machine can run on a GPU, and the exact reason where it cannot.

One probe per GPU path: the CUDA device, CuPy with NVRTC, ONNX Runtime's CUDA and TensorRT
providers, TensorRT, NVDEC. ``streamgraph doctor`` prints them all, and the ``auto`` choices at run
time (``engine: auto``, ``decode: {device: auto}``) ask the same probes, so the log and ``doctor``
never disagree. Each probe runs once per process (cached), imports the GPU stack lazily and only
when it is installed, and never raises: a failure is the reason the path is unusable.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("streamgraph.capabilities")

PROBE_MODEL = (
    b'\x08\x08\x12\x00:7\n\x0c\n\x01x\x12\x01y"\x04Relu\x12\x05probeZ\x0f\n\x01x\x12\n\n\x08\x08\x01\x12\x04\n'
    b"\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r"
)
"""A 67-byte ONNX model (opset 13, one Relu on a float[1]), made once with the ``onnx`` package:
a session on it shows which execution providers really load, without a model file."""

NVDEC_CODECS = {"h264": "H264", "hevc": "HEVC"}
"""Our codec names -> PyNvVideoCodec's ``cudaVideoCodec`` members."""


@dataclass(frozen=True, slots=True)
class Check:
    """One GPU path: ``problem`` is None where it is usable; ``detail`` says what was found."""

    name: str
    problem: str | None
    detail: str = ""

    @property
    def usable(self) -> bool:
        return self.problem is None


def package_version(*names: str) -> str | None:
    """The installed version of the first of ``names`` that is installed (distribution names)."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@functools.cache
def cuda_device() -> Check:
    """A CUDA device through cuda-python: the driver's and runtime's CUDA versions and its name."""
    if _missing("cuda"):
        return Check("CUDA device", "cuda-python is not installed (pip install -e '.[gpu]')")
    try:
        from .engines.cuda import cudart

        error, count = cudart.cudaGetDeviceCount()
        if error != cudart.cudaError_t.cudaSuccess or count < 1:
            return Check("CUDA device", f"no CUDA device ({_cuda_error_name(error)})")
        _, driver = cudart.cudaDriverGetVersion()
        _, runtime = cudart.cudaRuntimeGetVersion()
        _, props = cudart.cudaGetDeviceProperties(0)
        name = props.name.decode(errors="replace").strip("\0") if isinstance(props.name, bytes) else str(props.name)
    except Exception as exc:  # a broken driver install raises anything
        return Check("CUDA device", f"cuda-python cannot reach the driver: {_reason(exc)}")
    detail = (
        f"{count} device(s), 0: {name}; driver supports CUDA {_cuda_version(driver)}, runtime {_cuda_version(runtime)}"
    )
    return Check("CUDA device", None, detail)


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"


def _cuda_error_name(error: Any) -> str:
    return str(getattr(error, "name", error))


@functools.cache
def cupy_device() -> Check:
    """CuPy on device 0, with NVRTC: every CuPy elementwise kernel is compiled at run time."""
    missing = _missing("cupy")
    if missing:
        return Check("CuPy", "cupy is not installed (pip install -e '.[gpu]')")
    device = cuda_device()
    if not device.usable:
        return Check("CuPy", device.problem)
    try:
        import cupy

        nvrtc = cupy.cuda.nvrtc.getVersion()
        # A tiny kernel compiled and run: NVRTC missing (cupy without its [ctk] extra on a
        # driver-only machine) fails here rather than on the first frame.
        value = float(cupy.ElementwiseKernel("float32 x", "float32 y", "y = x + 1", "sg_probe")(cupy.ones(1, "f4"))[0])
    except Exception as exc:
        return Check("CuPy", f"CuPy cannot compile a kernel (NVRTC, from cupy's [ctk] extra?): {_reason(exc)}")
    if value != 2.0:
        return Check("CuPy", f"a probe kernel computed {value}, not 2.0")
    return Check("CuPy", None, f"cupy {cupy.__version__}, NVRTC {nvrtc[0]}.{nvrtc[1]}")


def onnxruntime_package() -> str:
    """Which onnxruntime distribution is installed (two provide the same module)."""
    found = [f"{name} {version}" for name in ("onnxruntime-gpu", "onnxruntime") if (version := package_version(name))]
    return ", ".join(found) or "onnxruntime: not installed"


def preload_cuda_libraries() -> None:
    """Load the CUDA, cuBLAS and cuDNN libraries onnxruntime-gpu needs from the nvidia-* wheels
    (its ``[cuda,cudnn]`` extras, or PyTorch's); without them its CUDA provider does not load.
    ``onnxruntime.preload_dlls`` looks only beside onnxruntime itself; the wheels may sit in
    another folder of ``sys.path`` (onnxruntime-gpu installed with ``--target`` or in the user's
    site, PyTorch's CUDA in the system's), so every such folder is tried first."""
    import onnxruntime

    preload = getattr(onnxruntime, "preload_dlls", None)
    if preload is None:
        return
    for library in _nvidia_libraries(onnxruntime):
        try:
            ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:  # a wheel of another CUDA major: the provider check names it
            log.debug("cannot preload %s: %s", library, exc)
    try:
        preload()  # what is loaded already is found by its name; registers the CUDA plugin too
    except Exception as exc:
        log.debug("onnxruntime.preload_dlls: %s", exc)


def _nvidia_libraries(onnxruntime: Any) -> list[Path]:
    """The CUDA/cuDNN libraries onnxruntime would preload, found in any ``sys.path`` folder
    that holds an ``nvidia`` package, in onnxruntime's order (cuBLASLt before cuBLAS)."""
    import sys

    relative_paths = getattr(onnxruntime, "_get_nvidia_dll_paths", None)
    if relative_paths is None:
        return []
    try:
        wanted: list[tuple[str, ...]] = list(relative_paths(False, True, True))
    except Exception:  # a private helper: its signature may change
        return []
    found: dict[str, Path] = {}
    for folder in sys.path:
        for parts in wanted:
            path = Path(folder or ".", *parts)
            if parts[-1] not in found and path.is_file():
                found[parts[-1]] = path
    return [found[parts[-1]] for parts in wanted if parts[-1] in found]


def loaded_providers(requested: list[str]) -> list[str]:
    """The providers a session asking for ``requested`` really gets (ONNX Runtime drops one it
    cannot load, with a warning, and runs the model on the CPU)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # the reason is reported by ``missing_library`` instead
    session = onnxruntime.InferenceSession(PROBE_MODEL, options, providers=requested)
    providers: list[str] = session.get_providers()
    return providers


def missing_library(provider: str) -> str:
    """Why ONNX Runtime could not load ``provider``'s library: the loader's own message (it
    names the missing shared library, e.g. ``libcublasLt.so.13``), or a pointer to ORT's log."""
    import onnxruntime

    short = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "tensorrt"}.get(provider)
    capi = Path(onnxruntime.__file__).parent / "capi"
    library = capi / f"libonnxruntime_providers_{short}.so"
    if short is None or not library.is_file():
        return f"{provider}'s library is not in {capi}"
    try:
        ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(library))
    except OSError as exc:
        return f"{library.name} does not load: {exc}"
    return f"{library.name} loads, but the provider did not start (ONNX Runtime's log says why)"


def _onnxruntime_provider(provider: str, label: str) -> Check:
    try:
        import onnxruntime
    except ImportError as exc:
        return Check(label, f"onnxruntime does not import: {exc}")
    package = onnxruntime_package()
    if provider not in onnxruntime.get_available_providers():
        hint = "install onnxruntime-gpu (pip install -e '.[gpu]')"
        if "onnxruntime-gpu" in package and "onnxruntime " in package:
            hint = "both onnxruntime and onnxruntime-gpu are installed and the CPU one won: reinstall onnxruntime-gpu"
        return Check(label, f"this onnxruntime ({package}) has no {provider}: {hint}")
    device = cuda_device()
    if not device.usable and not _missing("cuda"):  # without cuda-python, the session below tells
        return Check(label, device.problem, package)
    preload_cuda_libraries()
    try:
        providers = loaded_providers([provider, "CPUExecutionProvider"])
    except Exception as exc:
        return Check(label, f"a session with {provider} fails: {_reason(exc)}", package)
    if provider not in providers:
        return Check(label, f"{provider} did not load: {missing_library(provider)}", package)
    return Check(label, None, f"{package}; a session loads {', '.join(providers)}")


@functools.cache
def onnxruntime_cuda() -> Check:
    return _onnxruntime_provider("CUDAExecutionProvider", "ONNX Runtime CUDA")


@functools.cache
def onnxruntime_tensorrt() -> Check:
    return _onnxruntime_provider("TensorrtExecutionProvider", "ONNX Runtime TensorRT provider")


@functools.cache
def tensorrt() -> Check:
    """TensorRT 10 (our engine's API), CuPy and a CUDA device."""
    if _missing("tensorrt"):
        return Check("TensorRT", "tensorrt is not installed (pip install -e '.[tensorrt]': TensorRT 10 for CUDA 13)")
    try:
        import tensorrt as trt

        version = str(trt.__version__)
    except Exception as exc:  # libnvinfer missing or of another CUDA
        return Check("TensorRT", f"tensorrt does not import: {_reason(exc)}")
    if not version.startswith("10."):
        fix = "pip install 'tensorrt-cu13>=10.13,<11'"
        return Check("TensorRT", f"TensorRT {version}: auto takes TensorRT 10, which the engine is built on ({fix})")
    cupy = cupy_device()
    if not cupy.usable:
        return Check("TensorRT", f"needs CuPy: {cupy.problem}", f"TensorRT {version}")
    return Check("TensorRT", None, f"TensorRT {version}")


@functools.cache
def nvdec(codec: str | None = None) -> Check:
    """NVDEC through PyNvVideoCodec: the package imports (it loads ``libnvcuvid.so.1``, which only
    a container with the driver's ``video`` capability has), CuPy works, and the decoder reports
    ``codec`` (default H.264) as supported for 8-bit 4:2:0."""
    name = "NVDEC" if codec is None else f"NVDEC {codec}"
    if codec is not None and codec not in NVDEC_CODECS:
        return Check(name, f"NVDEC does not take {codec!r} here (only {', '.join(NVDEC_CODECS)})")
    if _missing("PyNvVideoCodec"):
        return Check(name, "PyNvVideoCodec is not installed (pip install -e '.[gpu]')")
    cupy = cupy_device()
    if not cupy.usable:
        return Check(name, f"needs CuPy: {cupy.problem}")
    try:
        ctypes.CDLL("libnvcuvid.so.1")
    except OSError as exc:
        return Check(name, f"libnvcuvid.so.1 does not load (a container needs the driver's 'video' capability): {exc}")
    try:
        import PyNvVideoCodec as nvc

        caps = nvc.GetDecoderCaps(
            gpuid=0,
            codec=getattr(nvc.cudaVideoCodec, NVDEC_CODECS[codec or "h264"]),
            chromaformat=_chroma_420(nvc),
            bitdepth=8,
        )
    except Exception as exc:
        return Check(name, f"PyNvVideoCodec cannot query the decoder: {_reason(exc)}")
    supported = _caps_supported(caps)
    version = package_version("pynvvideocodec") or "?"
    if supported is False:
        return Check(name, f"the GPU's decoder does not support {codec or 'h264'} 8-bit 4:2:0 ({caps})")
    return Check(name, None, f"PyNvVideoCodec {version}; caps {caps}")


def _chroma_420(nvc: Any) -> Any:
    """PyNvVideoCodec's 4:2:0 member of ``cudaVideoChromaFormat`` (it prints as
    ``cudaVideoChromaFormat.420``; the attribute name is not a Python identifier)."""
    enum = nvc.cudaVideoChromaFormat
    members = getattr(enum, "__members__", {})
    for name in ("420", "YUV420", "_420", "cudaVideoChromaFormat_420"):
        if name in members:
            return members[name]
        if hasattr(enum, name):
            return getattr(enum, name)
    raise LookupError(f"no 4:2:0 member in cudaVideoChromaFormat ({', '.join(members) or 'no members listed'})")


def _caps_supported(caps: Any) -> bool | None:
    """Whether ``GetDecoderCaps``'s answer says the codec is supported (None: it does not say).
    PyNvVideoCodec 2.2 answers a dict (``num_decoder_engines``, ``width_max``, ``height_max``,
    ...) whose maxima are 0 for a codec the GPU cannot decode."""
    values = caps if isinstance(caps, dict) else {k: getattr(caps, k) for k in dir(caps) if not k.startswith("_")}
    for key in ("is_supported", "supported", "bIsSupported"):
        if key in values:
            return bool(values[key])
    if "width_max" in values:
        return int(values["width_max"]) > 0
    return None


def all_checks() -> list[Check]:
    """Every GPU path, in the order ``doctor`` prints them."""
    return [
        cuda_device(),
        cupy_device(),
        onnxruntime_cuda(),
        onnxruntime_tensorrt(),
        tensorrt(),
        nvdec("h264"),
        nvdec("hevc"),
    ]
