"""``streamgraph doctor``: what this machine can run, and for each GPU path the exact reason where
it cannot, in one screen. It prints the probes ``engine: auto`` and ``decode: {device: auto}``
decide by (``pipeline.capabilities``), so its answer and the run's log never disagree."""

from __future__ import annotations

import platform
import sys

from . import __version__, capabilities
from .engines import choose_engine


def report() -> list[str]:
    """The lines ``doctor`` prints."""
    av_version = capabilities.package_version("av") or "not installed"
    lines = [
        f"streamgraph {__version__}, Python {platform.python_version()} on {platform.system()} {platform.machine()}",
        f"CPU path: usable (decode: PyAV {av_version}; models: {capabilities.onnxruntime_package()}, CPU provider)",
        "",
        "GPU paths:",
    ]
    checks = capabilities.all_checks()
    width = max(len(check.name) for check in checks)
    for check in checks:
        state = "usable" if check.usable else "unavailable"
        why = check.detail if check.usable else check.problem
        lines.append(f"  {check.name:<{width}}  {state}: {why}")
        if not check.usable and check.detail:
            lines.append(f"  {'':<{width}}  ({check.detail})")
    engine = choose_engine()
    providers = f" [{', '.join(engine.providers)}]" if engine.providers else ""
    nvdec = capabilities.nvdec("h264")
    lines += [
        "",
        "What auto chooses here:",
        f"  engine: auto          -> {engine.kind}{providers} ({engine.why})",
        "  decode: device auto   -> "
        + ("NVDEC, for pipelines whose models run on the GPU" if nvdec.usable else f"the CPU ({nvdec.problem})"),
    ]
    return lines


def main() -> int:
    print("\n".join(report()))
    sys.stdout.flush()
    return 0
