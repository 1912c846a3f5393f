"""A soak run: live streams for a long time, watching the process for what it should not pile up.

Run it from the repository root:

    .venv/bin/python bench/soak.py [--minutes 30] [--streams 8] [--churn-every-s 5] [--detect]

One pipeline runs in this process, on an embedded nats-server, with the HTTP API: ``--streams``
file streams of the sample at ``rate: native``, looped (ids cam0, cam1, ...), through decode ->
prepare -> publish (``--detect``: decode -> infer(pp-ocrv4-det), which prepares the frames it
runs, behind a ``drop_oldest`` edge as a live service runs it -> text_detection -> publish).
Every ``--churn-every-s`` seconds one more stream, with a new id each time (churn1, churn2, ...),
is added through ``POST /streams`` and removed with ``DELETE /streams/<id>`` half a cycle later.
A NATS subscriber in the same process counts the results and events of every stream, and
``/metrics`` is scraped once a minute, as Prometheus would.

It runs in-process because the asyncio tasks can only be counted from inside (the service has no
route that reports them); the figures therefore include the bench's own subscriber and HTTP
client, which keep counts only. Sampled once per churn cycle, just before the add (no sample
catches the extra stream): resident memory (``VmRSS``), open file descriptors
(``/proc/self/fd``), asyncio tasks, OS threads (``/proc/self/status``: FFmpeg's and ONNX
Runtime's too), and the streams whose counters the runtime keeps (shown, not judged: it keeps
every stream's counters for the run, so it grows by one per churned stream). Printed at the start
and every minute.

At the end: the growth of each figure from the middle third of the run to the last third (the
median of the samples in each; the first third is the warm-up), and PASS if each grew by less
than ``--max-growth-pct`` (5) and the run itself held up (every stream published in the last
third, every add and remove answered 2xx, every churned stream published and ended), else FAIL
with the reason (exit status 1). Ctrl-C ends the run early and reports what it has.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
from batching import cpu_model
from soak_figures import Growth, Sample, growths, print_markdown, print_row, take_sample

from pipeline.bus import NatsServer
from pipeline.config import parse_config
from pipeline.runner import Runner
from pipeline.server import ApiServer
from pipeline.service import run_pipeline

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "text.mp4"
MODEL = "pp-ocrv4-det"
PIPELINE = "soak"
PREFIX = "bench"
NATIVE_FPS = 25
"""The sample's frame rate."""
REMOVE_TIMEOUT_S = 30.0
"""How long a ``DELETE`` may take before the bench calls the removal failed (the source waits 10 s)."""


# --------------------------------------------------------------------------- what is received


@dataclass
class Received:
    """Results and events per stream, counted by a NATS subscriber."""

    results: Counter[str] = field(default_factory=Counter)
    ended: dict[str, str] = field(default_factory=dict)
    """Stream id -> the reason of its ``ended`` event."""
    errors: dict[str, str] = field(default_factory=dict)
    """Stream id -> the message of its ``error`` event."""

    @property
    def total(self) -> int:
        return sum(self.results.values())

    async def on_message(self, msg: Any) -> None:
        # <prefix>.<pipeline>.<stream>[.events]; the stream ids here hold no dots.
        parts = msg.subject.split(".")
        if parts[-1] != "events":
            self.results[parts[2]] += 1
            return
        event = json.loads(msg.data)
        if event["event"] == "ended":
            self.ended[event["stream_id"]] = event.get("reason", "?")
        elif event["event"] == "error":
            self.errors[event["stream_id"]] = event.get("message", "?")


@dataclass
class Churn:
    """The streams added and removed through the API."""

    added: int = 0
    removed: int = 0
    ids: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- the run


def pipeline_config(args: argparse.Namespace, nats_url: str) -> dict[str, Any]:
    streams = [
        {"id": f"cam{i}", "uri": str(SAMPLE), "options": {"rate": "native", "loop": True}} for i in range(args.streams)
    ]
    source = {
        "name": "cameras",
        "type": "streams",
        "params": {"streams": streams, "max_streams": args.streams + 1},
    }
    decode: dict[str, Any] = {"name": "decode", "type": "decode", "inputs": ["cameras"], "params": {}}
    if args.detect:
        # As a live service runs a model slower than its cameras: a short drop_oldest edge in front
        # of it sheds what it cannot take (counted), FFmpeg's frame threads would only hold frames back.
        decode["params"]["threads"] = 1
        work: list[dict[str, Any]] = [
            {
                "name": "det",
                "type": "infer",
                "inputs": ["decode"],
                "edge": {"capacity": 2, "policy": "drop_oldest"},
                "params": {"model": MODEL, "batch": {"max_size": "auto", "max_delay_ms": 10}},
            },
            {"name": "text", "type": "text_detection", "inputs": ["det"]},
        ]
    else:
        work = [{"name": "prep", "type": "prepare", "inputs": ["decode"], "params": {"model": MODEL}}]
    return {
        "pipeline": PIPELINE,
        "nats": {"url": nats_url, "prefix": PREFIX},
        "api": {"listen": "127.0.0.1:0"},
        "runtime": {"threads": args.threads},
        "stages": [source, decode, *work, {"name": "publish", "type": "publish", "inputs": [work[-1]["name"]]}],
    }


class Soak:
    def __init__(
        self, args: argparse.Namespace, runner: Runner, pipeline: asyncio.Task[Any], api_url: str, received: Received
    ) -> None:
        self.args = args
        self.runner = runner
        self.pipeline = pipeline
        self.api_url = api_url
        self.received = received
        self.churn = Churn()
        self.failures: list[str] = []
        """What went wrong in the run itself (an add or remove refused, the pipeline ended)."""
        self.samples: list[Sample] = []
        self.stop = asyncio.Event()
        self.at_last_third: Counter[str] | None = None
        """Results per stream when the last third began."""
        self._began = 0.0
        self._printed_minutes = -1

    async def run(self, http: aiohttp.ClientSession) -> float:
        """Churn and sample until the time is up (or Ctrl-C); the seconds it ran."""
        await self._wait_for_results()
        self._began = time.monotonic()
        duration_s = self.args.minutes * 60.0
        cycle_s = self.args.churn_every_s
        cycle = 0
        while not self.stop.is_set():
            if self.pipeline.done():
                self.failures.append("the pipeline ended before the time was up")
                break
            at_s = time.monotonic() - self._began
            self.samples.append(take_sample(at_s, self.runner, self.received.total, self.churn.added))
            if self.at_last_third is None and at_s >= 2 * duration_s / 3:
                self.at_last_third = Counter(self.received.results)
            finished = at_s >= duration_s
            await self._maybe_report(http, at_s, force=finished)
            if finished:
                break
            cycle += 1
            await self._add(http, f"churn{cycle}")
            await self._sleep_until(self._began + (cycle - 0.5) * cycle_s)
            await self._remove(http, f"churn{cycle}")
            await self._sleep_until(self._began + cycle * cycle_s)
        return time.monotonic() - self._began

    @property
    def streams(self) -> list[str]:
        """The ids of the streams that run throughout."""
        return [f"cam{i}" for i in range(self.args.streams)]

    async def _wait_for_results(self) -> None:
        """Start the clock once every stream has published (start-up is not the run)."""
        while not set(self.streams) <= set(self.received.results) and not self.stop.is_set():
            await asyncio.sleep(0.1)

    async def _sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):  # the time is up: the usual case
                await asyncio.wait_for(self.stop.wait(), delay)

    async def _add(self, http: aiohttp.ClientSession, stream_id: str) -> None:
        body = {"id": stream_id, "uri": str(SAMPLE), "options": {"rate": "native", "loop": True}}
        if await self._ask(http, "POST", "/streams", f"add {stream_id}", 201, json=body):
            self.churn.added += 1
            self.churn.ids.append(stream_id)

    async def _remove(self, http: aiohttp.ClientSession, stream_id: str) -> None:
        if stream_id not in self.churn.ids:
            return
        timeout = aiohttp.ClientTimeout(total=REMOVE_TIMEOUT_S)
        if await self._ask(http, "DELETE", f"/streams/{stream_id}", f"remove {stream_id}", 200, timeout=timeout):
            self.churn.removed += 1

    async def _ask(
        self, http: aiohttp.ClientSession, method: str, route: str, what: str, expected: int, **kwargs: Any
    ) -> bool:
        """One control-plane request; False (and a failure noted) unless it answered ``expected``."""
        try:
            async with http.request(method, f"{self.api_url}{route}", **kwargs) as response:
                if response.status != expected:
                    self.failures.append(f"{what}: {response.status} {await response.text()}")
                    return False
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failures.append(f"{what}: {type(exc).__name__} {exc}")
            return False
        return True

    async def _maybe_report(self, http: aiohttp.ClientSession, at_s: float, *, force: bool) -> None:
        minute = int(at_s // 60)
        if minute == self._printed_minutes and not force:
            return
        self._printed_minutes = minute
        async with http.get(f"{self.api_url}/metrics") as response:  # as a Prometheus scrape would
            await response.read()
        print_row(self.samples)


# --------------------------------------------------------------------------- printing


def verdict(found: list[Growth], soak: Soak, duration_s: float, max_growth_pct: float) -> tuple[bool, list[str]]:
    """PASS or not, and why not."""
    problems = [
        f"{g.label} grew {g.percent:+.1f}% (limit {max_growth_pct:g}%)" for g in found if g.percent >= max_growth_pct
    ]
    if not found:
        problems.append("too few samples to compare the middle and last thirds (run longer)")
    received = soak.received
    before = soak.at_last_third or Counter()
    stalled = [s for s in soak.streams if received.results[s] <= before[s]]
    if stalled:
        problems.append(f"no results in the last third from {', '.join(stalled)}")
    problems += soak.failures
    for stream_id in soak.churn.ids:  # each added, then removed: it published, then ended
        if not received.results[stream_id]:
            problems.append(f"{stream_id} published nothing")
        if stream_id not in received.ended:
            problems.append(f"{stream_id} never sent its ended event")
    for stream_id, message in received.errors.items():
        problems.append(f"{stream_id} failed: {message}")
    return not problems, problems


def print_end(soak: Soak, duration_s: float, args: argparse.Namespace) -> bool:
    samples = soak.samples
    found, in_middle, in_last = growths(samples, duration_s)
    passed, problems = verdict(found, soak, duration_s, args.max_growth_pct)
    stats = soak.runner.stats
    cams = [soak.received.results[s] for s in soak.streams]
    print(
        f"\nran {duration_s / 60:.1f} min: {soak.received.total} results; the {args.streams} streams "
        f"{min(cams)}-{max(cams)} each; {soak.churn.added} streams added, {soak.churn.removed} removed, "
        f"{sum(1 for s in soak.churn.ids if soak.received.ended.get(s) == 'stopped')} ended as stopped; "
        f"frames decoded {stats.decoded}, dropped {stats.dropped}"
        + (f" {stats.drops_by_reason()}" if stats.dropped else "")
    )
    if found:
        print(
            f"growth from the middle third ({in_middle} samples) to the last third ({in_last} samples), "
            "medians; the first third is the warm-up:"
        )
        for g in found:
            print(f"  {g.label:>13}  {g.before:10.1f} -> {g.after:10.1f}  {g.percent:+6.1f}%")
    if args.markdown:
        print_markdown(samples, found)
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if passed:
        print(f"PASS: every figure grew less than {args.max_growth_pct:g}% after the warm-up", flush=True)
    else:
        print("FAIL: " + "; ".join(problems), flush=True)
    return passed


def print_machine(args: argparse.Namespace) -> None:
    cores = os.cpu_count() or 1
    print(
        f"machine: {cpu_model()}, {cores} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; load average at start: "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    work = "decode -> infer(pp-ocrv4-det) -> text_detection" if args.detect else "decode -> prepare"
    print(
        f"{args.streams} streams of {SAMPLE.name} at rate native, looped, through {work} -> publish; one more "
        f"stream added and removed every {args.churn_every_s:g} s; {args.minutes:g} min (at native rate the "
        f"streams make {args.streams * NATIVE_FPS} frames/s: fewer results/s means the host cannot keep up)",
        flush=True,
    )


# --------------------------------------------------------------------------- main


async def soak(args: argparse.Namespace, nats_url: str) -> bool:
    config = parse_config(pipeline_config(args, nats_url), base_dir=ROOT)
    runners: list[Runner] = []
    apis: list[ApiServer] = []
    received = Received()
    client = await nats.connect(nats_url)
    await client.subscribe(f"{PREFIX}.{PIPELINE}.>", cb=received.on_message)
    task = asyncio.create_task(
        run_pipeline(config, nats_url=nats_url, on_started=runners.append, on_api=apis.append, handle_signals=False)
    )
    try:
        while not runners and not task.done():
            await asyncio.sleep(0.05)
        if task.done():
            task.result()  # raises what stopped it
        run = Soak(args, runners[0], task, apis[0].url, received)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, run.stop.set)
        async with aiohttp.ClientSession() as http:
            duration_s = await run.run(http)
        loop.remove_signal_handler(signal.SIGINT)
    finally:
        if runners:
            runners[0].request_stop()
        await task
        await client.drain()
    return print_end(run, duration_s, args)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run after start-up (default 30)")
    parser.add_argument("--streams", type=int, default=8, help="looped file streams at native rate (default 8)")
    parser.add_argument(
        "--churn-every-s", type=float, default=5.0, help="add and remove one more stream this often (default 5)"
    )
    parser.add_argument("--detect", action="store_true", help="run the text detector, not only prepare")
    parser.add_argument("--threads", type=int, default=4, help="runtime.threads (default 4)")
    parser.add_argument(
        "--max-growth-pct", type=float, default=5.0, help="growth after the warm-up that fails the run (default 5)"
    )
    parser.add_argument("--markdown", action="store_true", help="also print the minutes and the growth as Markdown")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.streams < 1 or args.churn_every_s <= 0:
        parser.error("--minutes and --churn-every-s must be positive, --streams at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not SAMPLE.is_file():
        print(f"{SAMPLE} is missing: rendering it with samples/make_samples.py", flush=True)
        subprocess.run([sys.executable, str(ROOT / "samples" / "make_samples.py")], check=True)
    print_machine(args)
    with NatsServer() as server:
        passed = asyncio.run(soak(args, server.url))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
