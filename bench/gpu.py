"""The GPU path end to end: 1080p H.264 streams through NVDEC -> GPU prepare -> text detection.

Run it on a machine with an NVIDIA GPU, from the repository root, after ``pip install -e '.[gpu]'``:

    .venv/bin/python bench/gpu.py [--streams 1,8,32] [--seconds 4] [--markdown]

It makes a 1080p H.264 clip (the sample's frames scaled up, 25 frames/s), then for 1, 8 and 32
concurrent ``file`` streams read as fast as possible runs decode -> prepare -> infer (``engine:
auto``, ``batch: {max_size: auto, max_delay_ms: 10}``) -> text_detection -> publish, once with
``decode: {device: gpu}`` and once with ``decode: {device: cpu}``, and prints total frames/s,
p50/p99 latency (capture to receipt by a NATS subscriber) and the peak GPU memory in use. The
engine and providers each run chose are in its log. It prints figures and asserts nothing; on a
machine without a usable NVDEC it says why and exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batching import SAMPLE, Collector, Outcome, Setup, ensure_sample, reencode_live, run_streamgraph

from pipeline.bus import NatsServer
from stages.nvdec import nvdec_unusable

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


async def run(args: argparse.Namespace, server: NatsServer, collector: Collector, clip: Path) -> list[str]:
    rows = []
    for device in ("gpu", "cpu"):
        setup = Setup(clip, server.url, threads=8, intra_op_threads=0, max_delay_ms=10.0, decode_device=device)
        for streams in args.stream_counts:
            with GpuMemory() as memory:
                row: Outcome = await run_streamgraph(
                    f"{device} decode",
                    f"gpu-{device}-{streams}",
                    setup,
                    collector,
                    streams,
                    {"max_size": "auto", "max_delay_ms": 10.0},
                )
            batch = f"{row.mean_batch:.2f}" if row.mean_batch is not None else "-"
            line = (
                f"| {device} | {streams} | {row.frames} | {row.fps:.1f} | {row.percentile(50):.0f} | "
                f"{row.percentile(99):.0f} | {batch} | {memory.peak_mib:.0f} |"
            )
            print(line, flush=True)
            rows.append(line)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1,8,32", help="comma-separated stream counts")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of the clip each stream plays")
    args = parser.parse_args(argv)
    args.stream_counts = [int(s) for s in args.streams.split(",") if s.strip()]
    problem = nvdec_unusable("h264")
    if problem is not None:
        print(f"bench/gpu.py needs an NVIDIA GPU with NVDEC: {problem}", file=sys.stderr)
        return 2
    ensure_sample()
    print("| decode | streams | frames | frames/s | p50 ms | p99 ms | mean batch | peak GPU MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", flush=True)
    with tempfile.TemporaryDirectory(prefix="streamgraph-gpu-bench-") as tmp, NatsServer() as server:
        clip = clip_1080p(Path(tmp), args.seconds)
        collector = Collector(server.url)
        collector.start()
        try:
            asyncio.run(run(args, server, collector, clip))
        finally:
            collector.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
