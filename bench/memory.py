"""Memory per live stream: resident memory of ``streamgraph run`` at 1, 8 and 32 streams.

Run it from the repository root:

    .venv/bin/python bench/memory.py [--streams 1,8,32] [--seconds 30] [--config configs/live.yaml]

For each stream count N it runs the config (by default ``configs/live.yaml``: decode -> infer
(pp-ocrv4-det, preparing only the frames it runs) -> text_detection -> overlay -> view -> publish)
as its own process, with the config's sources replaced by N looping streams of the 640x360
sample at its own rate (``rate: native``), and samples the process's resident memory (``VmRSS``)
every second; the figure is the median over the second half of ``--seconds`` (the first half is
the warm-up: models loaded, every stream's decoder and queues filled). MB per stream is the growth
over the 1-stream run divided by the streams added, so the models, the runtime and the libraries
count once, as the issue's "beyond the models" asks.

``--decode-threads T`` sets the decode stage's FFmpeg threads per stream (the config's default
otherwise): each decoder thread of FFmpeg's frame threading keeps frames of its own.

It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "text.mp4"


def config_for(base: Path, streams: int, decode_threads: int | None) -> dict[str, Any]:
    config = yaml.safe_load(base.read_text())
    source = next(stage for stage in config["stages"] if stage["type"] == "streams")
    source["params"]["max_streams"] = max(streams, source["params"].get("max_streams", 16))
    source["params"]["streams"] = [
        {"id": f"cam{i}", "uri": str(SAMPLE), "options": {"rate": "native", "loop": True}} for i in range(streams)
    ]
    config.pop("api", None)  # one process at a time, but no port to collide on
    if decode_threads is not None:
        decode = next(stage for stage in config["stages"] if stage["type"] == "decode")
        decode.setdefault("params", {})["threads"] = decode_threads
    return config


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def measure(base: Path, streams: int, seconds: float, decode_threads: int | None, work: Path) -> tuple[float, float]:
    """The run's steady resident MB, and the results it published a second (all streams)."""
    path = work / f"memory-{streams}.yaml"
    path.write_text(yaml.safe_dump(config_for(base, streams, decode_threads)))
    env = {**os.environ, "STREAMGRAPH_NATS_URL": "embedded"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "--log-level", "WARNING", "run", str(path), "--no-progress"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,  # the run's summary line: how many results it published
        stderr=subprocess.DEVNULL,
        text=True,
    )
    samples: list[tuple[float, float]] = []
    began = time.monotonic()
    try:
        while (elapsed := time.monotonic() - began) < seconds:
            time.sleep(1.0)
            if process.poll() is not None:
                raise SystemExit(f"the run with {streams} streams ended early (exit {process.returncode})")
            mb = rss_mb(process.pid)
            if mb is not None:
                samples.append((elapsed, mb))
    finally:
        process.terminate()
        summary, _ = process.communicate(timeout=60)
    steady = [mb for at, mb in samples if at >= seconds / 2]
    published = re.search(r"(\d+) messages published", summary)
    return statistics.median(steady), int(published.group(1)) / seconds if published else float("nan")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--streams", default="1,8,32", help="stream counts (default 1,8,32; the first is the base)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per run (default 30)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "live.yaml"), help="the pipeline (live.yaml)")
    parser.add_argument("--decode-threads", type=int, default=None, help="FFmpeg threads per stream in decode")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(n) for n in args.streams.split(",")]
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {Path(args.config).name}")
    rows: list[tuple[int, float, float]] = []
    with tempfile.TemporaryDirectory() as work:
        for streams in counts:
            mb, rate = measure(Path(args.config), streams, args.seconds, args.decode_threads, Path(work))
            rows.append((streams, mb, rate))
            print(f"  {streams} stream(s): {mb:.0f} MB resident, {rate:.1f} results/s", flush=True)
    base_streams, base_mb, _ = rows[0]
    print(f"{'streams':>7} {'RSS MB':>8} {'MB per stream beyond the first':>31} {'results/s':>10}")
    for streams, mb, rate in rows:
        per = (mb - base_mb) / (streams - base_streams) if streams > base_streams else float("nan")
        print(f"{streams:>7} {mb:>8.0f} {per:>31.1f} {rate:>10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
