"""The GPU path end to end: 1080p H.264 streams through NVDEC -> GPU prepare -> text detection.

Run it on a machine with an NVIDIA GPU, from the repository root, after ``pip install -e '.[gpu]'``
(or through ``make gpu-check``, offline: see docs/gpu.md):

    .venv/bin/python bench/gpu.py [--streams 1,8,32] [--seconds 4] [--markdown]

It makes a 1080p H.264 clip (the sample's frames scaled up, 25 frames/s), then for 1, 8 and 32
concurrent ``file`` streams read as fast as possible runs decode -> prepare -> infer (``engine:
auto``, ``batch: {max_size: auto, max_delay_ms: 10}``) -> text_detection -> publish, once with
``decode: {device: gpu}`` and once with ``decode: {device: cpu}``, and prints a row per run as it
ends: total frames/s, p50/p99 latency (capture to receipt by a NATS subscriber), the mean batch,
the peak GPU memory in use, and what the run actually used, read from its log: the engine
(``onnxruntime[CUDAExecutionProvider]``, ``tensorrt``...), the ONNX Runtime providers the session
loaded, and where decoding happened (``NVDEC``, ``CPU``, or NVDEC with some streams on the CPU).
The rows are a plain-text table, or a Markdown table with ``--markdown``; the lines the engine
choice logged (why a better engine was passed over) follow the table. It prints figures and
asserts nothing; on a machine without a usable NVDEC it says why and exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batching import SAMPLE, Collector, Outcome, Setup, ensure_sample, reencode_live, run_streamgraph

from pipeline.bus import NatsServer
from stages.decode.nvdec import nvdec_unusable

FPS = 25


def clip_1080p(out_dir: Path, seconds: float) -> Path:
    """The sample's frames scaled to 1920x1080, H.264 without B-frames, ``seconds`` long."""
    return reencode_live(SAMPLE, out_dir / "text-1080p.mp4", frames=round(seconds * FPS), size=(1920, 1080))


class GpuMemory:
    """Samples the device's used memory every 50 ms on a thread; ``peak_mib`` after ``stop``."""

    def __init__(self) -> None:
        from pipeline.engines.cuda import cuda_check, cudart

        self._read = lambda: cuda_check(cudart.cudaMemGetInfo())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak_mib = 0.0

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            _, free, total = self._read()
            self.peak_mib = max(self.peak_mib, (total - free) / 2**20)

    def __enter__(self) -> GpuMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class RunLog(logging.Handler):
    """The ``streamgraph`` log records of one run, read for what the run used."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> RunLog:
        logging.getLogger("streamgraph").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("streamgraph").removeHandler(self)

    def _args(self, message: str) -> list[tuple[object, ...]]:
        """The arguments of the records logged with the format ``message``."""
        return [r.args for r in self.records if r.msg == message and isinstance(r.args, tuple)]

    def engine(self) -> str:
        """What ran the model, as the infer stage reported it (``onnxruntime[CUDAExecutionProvider]``)."""
        described = {str(args[1]) for args in self._args("model %s on %s, batch %s") if len(args) > 1}
        return ", ".join(sorted(described)) or "?"

    def providers(self) -> str:
        """The providers the ONNX Runtime session loaded, best first (without ``ExecutionProvider``)."""
        loaded = {str(args[1]) for args in self._args("model %s loaded with %s") if len(args) > 1}
        return "; ".join(sorted(p.replace("ExecutionProvider", "") for p in loaded)) or "-"

    def decode_path(self, device: str, streams: int) -> str:
        """Where the frames were decoded: ``decode: {device: gpu}`` falls back to the CPU per stream
        (logged) for a codec NVDEC does not take; ``cpu`` never tries NVDEC."""
        if device == "cpu":
            return "CPU"
        on_cpu = {args[0] for args in self._args("stream %s: decoding on the CPU: %s") if args}
        return "NVDEC" if not on_cpu else f"NVDEC, CPU for {len(on_cpu)} of {streams} streams"

    def notes(self) -> list[str]:
        """The engine choice's own lines (why a better engine was passed over, a provider that did not load)."""
        loaded = "model %s loaded with %s"  # in the providers column already
        return [r.getMessage() for r in self.records if r.name.startswith("streamgraph.engine") and r.msg != loaded]


@dataclass
class Row:
    device: str
    streams: int
    outcome: Outcome
    peak_mib: float
    engine: str
    providers: str
    decode_path: str

    def cells(self) -> list[str]:
        row = self.outcome
        batch = f"{row.mean_batch:.2f}" if row.mean_batch is not None else "-"
        return [
            self.device,
            str(self.streams),
            str(row.frames),
            f"{row.fps:.1f}",
            f"{row.percentile(50):.0f}",
            f"{row.percentile(99):.0f}",
            batch,
            f"{self.peak_mib:.0f}",
            self.engine,
            self.providers,
            self.decode_path,
        ]


COLUMNS = ["decode", "streams", "frames", "frames/s", "p50 ms", "p99 ms", "mean batch", "peak GPU MiB"]
COLUMNS += ["engine", "providers", "decoded on"]
WIDTHS = [6, 7, 6, 8, 6, 6, 10, 12, 34, 10, 10]
NUMERIC = range(1, 8)


def header(markdown: bool) -> list[str]:
    if markdown:
        aligns = ["---:" if i in NUMERIC else "---" for i in range(len(COLUMNS))]
        return ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join(aligns) + " |"]
    line = format_plain(COLUMNS)
    return [line, "-" * len(line)]


def format_plain(cells: Sequence[str]) -> str:
    parts = [c.rjust(w) if i in NUMERIC else c.ljust(w) for i, (c, w) in enumerate(zip(cells, WIDTHS, strict=True))]
    return "  ".join(parts).rstrip()


def format_row(row: Row, markdown: bool) -> str:
    cells = row.cells()
    return "| " + " | ".join(cells) + " |" if markdown else format_plain(cells)


async def run(args: argparse.Namespace, server: NatsServer, collector: Collector, clip: Path) -> list[str]:
    notes: list[str] = []
    for device in ("gpu", "cpu"):
        setup = Setup(clip, server.url, threads=8, intra_op_threads=0, max_delay_ms=10.0, decode_device=device)
        for streams in args.stream_counts:
            with GpuMemory() as memory, RunLog() as run_log:
                outcome: Outcome = await run_streamgraph(
                    f"{device} decode",
                    f"gpu-{device}-{streams}",
                    setup,
                    collector,
                    streams,
                    {"max_size": "auto", "max_delay_ms": 10.0},
                )
            row = Row(
                device,
                streams,
                outcome,
                memory.peak_mib,
                run_log.engine(),
                run_log.providers(),
                run_log.decode_path(device, streams),
            )
            print(format_row(row, args.markdown), flush=True)
            notes += [note for note in run_log.notes() if note not in notes]
    return notes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--streams", default="1,8,32", help="comma-separated stream counts (default 1,8,32)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the clip each stream plays")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (default: plain text)")
    args = parser.parse_args(argv)
    args.stream_counts = [int(s) for s in args.streams.split(",") if s.strip()]
    problem = nvdec_unusable("h264")
    if problem is not None:
        print(f"bench/gpu.py needs an NVIDIA GPU with NVDEC: {problem}", file=sys.stderr)
        return 2
    # The engine and decode lines are INFO: keep them for RunLog; warnings still reach stderr.
    logger = logging.getLogger("streamgraph")
    logger.setLevel(logging.INFO)
    warnings = logging.StreamHandler()
    warnings.setLevel(logging.WARNING)
    logger.addHandler(warnings)
    ensure_sample()
    with tempfile.TemporaryDirectory(prefix="streamgraph-gpu-bench-") as tmp, NatsServer() as server:
        clip = clip_1080p(Path(tmp), args.seconds)
        print("\n".join(header(args.markdown)), flush=True)
        collector = Collector(server.url)
        collector.start()
        try:
            notes = asyncio.run(run(args, server, collector, clip))
        finally:
            collector.stop()
    if notes:
        print()
        print("engine choice:")
        for note in notes:
            print(f"- {note}" if args.markdown else f"  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
