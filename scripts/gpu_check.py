"""The offline GPU check's device side, run on the GPU machine; the packing side is gpu_bundle.py.

Run there with no internet and no venv: ``start``, ``step``, ``finish``, and the helpers ``probe``,
``unpack-wheels``, ``nvidia-libs`` and ``check``.

``make gpu-check`` begins the report with ``start``, runs each of its steps through ``step``, which
appends the step's output and exit status to the report as they come (a run cut short still leaves
what it had), and ends with ``finish``, which puts a summary table under the title and exits
nonzero if any step failed. ``check`` runs the same lines where there is no make. Only the standard
library is imported: this runs before the bundle's wheels are installed. See docs/gpu.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ENVIRONMENT = ("PYTHONPATH", "PATH", "LD_LIBRARY_PATH", "STREAMGRAPH_CACHE", "CUDA_VISIBLE_DEVICES")
"""Environment variables the report's header records."""


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
    step = f"{python} scripts/gpu_check.py step --report {report}"
    wheels = f"{bundle}/wheels"
    return [
        f"{env} {python} scripts/gpu_check.py start --report {report} --bundle {bundle}",
        f"if {python} -m pip --version >/dev/null 2>&1; then"
        f" {step} install 90 {python} -m pip install --no-index --no-deps --upgrade --disable-pip-version-check"
        f" --find-links {wheels} --target {site} {wheels}/*.whl;"
        f" else {step} install 90 {python} scripts/gpu_check.py unpack-wheels {wheels} {site}; fi",
        f"{env} {step} probe 45 {python} scripts/gpu_check.py probe",
        f"{env} {step} doctor 45 {python} -m pipeline.cli doctor",
        f"{env} {step} --expect '[0-9]+ passed' pytest-gpu 240"
        f" {python} -m pytest -m gpu tests/gpu -ra -v -p no:cacheprovider --durations=10",
        f"{env} {step} bench 120 {python} bench/gpu.py --markdown --streams 1,8 --seconds 2",
        f"{python} scripts/gpu_check.py finish --report {report}",
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
