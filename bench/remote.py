"""The model on an inference server against the model in the process, and our Triton client against NVIDIA's.

Run it from the repository root, after ``make servers`` (the Triton venv, ``.venv-triton``):

    .venv/bin/python bench/remote.py [--frames 100] [--requests 40] [--repeat 1] [--markdown]

It starts one real Triton (servers/triton_serve.py, PyTriton's ``tritonserver`` running
the ONNX file on ONNX Runtime, CPU, all cores, ``max_batch_size`` 8, dynamic batching) on free
loopback ports, serving PP-OCRv4 det as ``pp_ocrv4_det``, runs every batch size up to 8 on it once
(a shape's first run is slow; no contender should pay for it), then measures two things on it:

1. The pipeline: one ``file`` stream of the sample clip (its first ``--frames`` frames) read at
   ``rate: max`` through decode -> prepare -> infer(pp-ocrv4-det) -> text_detection -> publish with
   ``batch: {max_size: 4, max_delay_ms: 5}``, once per contender: the model in the process
   (``engine: onnxruntime``), on Triton over HTTP with binary tensors and over gRPC
   (``max_in_flight: 2``, the default), over HTTP with ``max_in_flight: 1`` (what the overlap of
   two batches gains) and over HTTP with the inputs in shared memory (``shared_memory: true``).
   Per run: frames/s (frames received over the time from the first packet
   read to the last message received, model loading left out), p50/p99 latency (a frame's
   ``capture_time`` to its receipt by a NATS subscriber on its own thread, as bench/batching.py
   measures; at ``rate: max`` mostly the wait behind the frames read before it), the mean of the
   messages' ``latency_ms.infer`` (a frame's time in the infer stage), the mean batch, the request
   and answer bodies per frame (the engine's transport counts; the stage's warm-up request counts
   as one frame), the CPU time per frame of this process (the pipeline) and of the server (with
   its child processes, from /proc), and frames/s as a share of the in-process run's.
2. The client alone, against NVIDIA's own ``tritonclient`` as the anchor: the same batch
   (``--batch``, random float32) sent ``--requests`` times with 1 and then 2 requests out at once,
   by our engine (``RemoteEngine.infer_async``: what the ``infer`` stage calls, with its answer
   check; KServe v2 HTTP binary and gRPC transports, and HTTP with shared memory, which has no
   anchor) and by ``tritonclient.http.aio`` and ``tritonclient.grpc.aio`` (bench/remote_anchor.py,
   run by the Triton venv's Python; the same load loop drives both). Per run: requests/s, p50/p99
   per-request latency, the client process's CPU time per request, the server's per request, and
   ours over theirs (requests/s).

The server, its model's ONNX Runtime threads, the pipeline and the clients all share this
machine's cores: a remote run pays for the client's CPU time with the model's, and throughput
follows the CPU time spent per frame (which the load of other tenants disturbs far less than
frames/s). ``--repeat R`` runs
every contender R times, interleaved, and keeps the fastest (the least disturbed on a shared
machine). It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.remote.servers: the tests' server launcher
sys.path.insert(0, str(Path(__file__).resolve().parent))
from batching import (
    MODEL,
    PREFIX,
    ROOT,
    SAMPLE,
    Collector,
    Outcome,
    Setup,
    cpu_model,
    cut_clip,
    ensure_sample,
    load1,
    pipeline_dict,
    summarize_messages,
)
from remote_anchor import parse_shape
from remote_clients import client_part, client_rows, client_verdict, warm_server
from remote_server import SERVED, server_cpu_s, triton

from pipeline.bus import NatsServer
from pipeline.config import parse_config
from pipeline.modelcard import load_model_card
from pipeline.modelstore import model_path
from pipeline.service import run_pipeline
from tests.remote.servers import TRITON_VENV, ServerProcess

IN_PROCESS = "in-process ORT"


@dataclass(frozen=True)
class Contender:
    label: str
    protocol: str | None
    """``http`` or ``grpc`` for a model on the server; None: in the process."""
    max_in_flight: int = 2
    shared_memory: bool = False


CONTENDERS = (
    Contender(IN_PROCESS, None),
    Contender("Triton HTTP, 2 in flight", "http", 2),
    Contender("Triton gRPC, 2 in flight", "grpc", 2),
    Contender("Triton HTTP, 1 in flight", "http", 1),
    Contender("Triton HTTP shm, 2 in flight", "http", 2, shared_memory=True),
)


# --------------------------------------------------------------------------- 1. the pipeline


@dataclass
class PipelineRun:
    outcome: Outcome
    requests: int = 0
    wire_bytes: int = 0
    """Request and answer bodies of the infer requests, both ways (0 in the process)."""
    engine: str = ""
    max_in_flight: int | None = None
    """Batches out at once to the server (None in the process)."""
    own_cpu_s: float = 0.0
    """This process's CPU time over the run: the pipeline, with the model where it runs here."""
    server_cpu_s: float = 0.0
    """The server's CPU time over the run (next to nothing when the model runs here)."""

    # The stage's warm-up before the first frame is one more model run of one frame (zeros of the
    # card's input size): it counts as a frame in the per-frame figures.

    @property
    def bytes_per_frame(self) -> float | None:
        return self.wire_bytes / (self.outcome.frames + 1) if self.requests and self.outcome.frames else None

    def cpu_ms_per_frame(self, cpu_s: float) -> float:
        return 1000.0 * cpu_s / (self.outcome.frames + 1)


def server_params(contender: Contender, server: ServerProcess) -> dict[str, Any]:
    url = server.grpc_url if contender.protocol == "grpc" else server.http_url
    params: dict[str, Any] = {"url": url, "model": SERVED, "max_in_flight": contender.max_in_flight}
    if contender.shared_memory:
        params["shared_memory"] = True
    return params


async def run_contender(
    contender: Contender, name: str, setup: Setup, collector: Collector, batch: dict[str, Any], server: ServerProcess
) -> PipelineRun:
    """bench/batching.py's pipeline with one stream, its det stage on ``contender``'s engine."""
    spec = pipeline_dict(name, setup, setup.clip, 1, batch)
    det = next(stage for stage in spec["stages"] if stage["name"] == "det")
    if contender.protocol is None:
        det["params"]["engine"] = "onnxruntime"
    else:
        det["params"] = {"model": MODEL, "engine": "triton", "server": server_params(contender, server), "batch": batch}
    started: list[Any] = []
    collector.begin(f"{PREFIX}.{name}.*")
    own_cpu, server_cpu = time.process_time(), server_cpu_s(server)
    summary = await run_pipeline(
        parse_config(spec, base_dir=ROOT), nats_url=setup.nats_url, on_started=started.append, handle_signals=False
    )
    own_cpu, server_cpu = time.process_time() - own_cpu, server_cpu_s(server) - server_cpu
    messages = summarize_messages(collector.finish(summary.stats.published))
    stage = started[0].graph.nodes["det"].stage
    batcher = stage.batcher
    # Frames/s over the first capture to the last receipt, as bench/batching.py counts them.
    window = messages.last_receipt - messages.first_capture if messages.count else 0.0
    mean_batch = batcher.batched_items / batcher.batches if batcher.batches else None
    run = PipelineRun(
        Outcome(contender.label, 1, window, messages, mean_batch, load1(), dropped=summary.stats.dropped),
        engine=stage.engine.description,
        max_in_flight=contender.max_in_flight if contender.protocol else None,
        own_cpu_s=own_cpu,
        server_cpu_s=server_cpu,
    )
    transport = getattr(stage.engine, "transport", None)
    if transport is not None:
        run.requests = transport.counts.requests
        run.wire_bytes = transport.counts.sent + transport.counts.received
    return run


async def pipeline_part(
    args: argparse.Namespace, server: ServerProcess, nats_url: str, clip: Path
) -> list[PipelineRun]:
    setup = Setup(clip, nats_url, args.threads, args.intra_op_threads, args.max_delay_ms, decode_device="cpu")
    batch = {"max_size": args.batch_size, "max_delay_ms": args.max_delay_ms}
    collector = Collector(nats_url)
    collector.start()
    runs: dict[str, list[PipelineRun]] = {}
    try:
        for repeat in range(args.repeat):
            for index, contender in enumerate(CONTENDERS):
                began = time.monotonic()
                run = await run_contender(contender, f"remote-{index}-{repeat}", setup, collector, batch, server)
                runs.setdefault(contender.label, []).append(run)
                row = run.outcome
                print(
                    f"  {contender.label:<28} {row.frames} frames, {row.fps:.1f} frames/s, dropped {row.dropped} "
                    f"({time.monotonic() - began:.0f} s, load {row.load1:.2f}; {run.engine})",
                    flush=True,
                )
    finally:
        collector.stop()
    return [max(group, key=lambda run: run.outcome.fps) for group in runs.values()]


def pipeline_rows(runs: list[PipelineRun]) -> tuple[list[str], list[list[str]]]:
    base = next((run.outcome.fps for run in runs if run.outcome.contender == IN_PROCESS), 0.0)
    header = [
        "contender",
        "frames",
        "frames/s",
        "p50 ms",
        "p99 ms",
        "infer ms",
        "mean batch",
        "body MB/frame",
        "pipeline CPU ms/frame",
        "server CPU ms/frame",
        "vs in-process",
    ]
    rows = []
    for run in runs:
        row = run.outcome
        per_frame = run.bytes_per_frame
        rows.append(
            [
                row.contender,
                f"{row.frames}",
                f"{row.fps:.1f}",
                f"{row.percentile(50):.0f}",
                f"{row.percentile(99):.0f}",
                f"{row.infer_ms:.0f}",
                f"{row.mean_batch:.2f}" if row.mean_batch is not None else "-",
                f"{per_frame / 1e6:.2f}" if per_frame is not None else "-",
                f"{run.cpu_ms_per_frame(run.own_cpu_s):.0f}",
                f"{run.cpu_ms_per_frame(run.server_cpu_s):.0f}",
                f"{row.fps / base:.2f}x" if base else "-",
            ]
        )
    return header, rows


# --------------------------------------------------------------------------- printing


def pipeline_verdict(runs: list[PipelineRun]) -> list[str]:
    """The goal (a remote path with 2 in flight within 0.8x of the in-process frames/s), and the
    CPU time each path spends per frame, which noise from other tenants disturbs far less."""
    base = next((run for run in runs if run.outcome.contender == IN_PROCESS), None)
    if base is None or not base.outcome.fps:
        return []
    base_cpu = base.cpu_ms_per_frame(base.own_cpu_s + base.server_cpu_s)
    lines = []
    for run in runs:
        if run is base:
            continue
        share = run.outcome.fps / base.outcome.fps
        cpu = run.cpu_ms_per_frame(run.own_cpu_s + run.server_cpu_s)
        goal = ""
        if run.max_in_flight == 2:
            goal = f"; goal >= 0.8x: {'met' if share >= 0.8 else 'NOT met'}"
        lines.append(
            f"{run.outcome.contender}: {share:.2f}x the in-process frames/s{goal}; CPU per frame, pipeline and "
            f"server together, {cpu:.0f} ms against {base_cpu:.0f} ms in the process ({cpu / base_cpu:.2f}x)"
        )
    return lines


def plain_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join(
        cell.rjust(width) if i else cell.ljust(width)
        for i, (cell, width) in enumerate(zip(header, widths, strict=True))
    )
    out = [line, "-" * len(line)]
    for row in rows:
        out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(out)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def print_tables(title: str, table: tuple[list[str], list[list[str]]], verdict: list[str], markdown: bool) -> None:
    print()
    print(title)
    print(plain_table(*table))
    for line in verdict:
        print(f"  {line}")
    if markdown:
        print()
        print(markdown_table(*table))


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--frames", type=int, default=100, help="frames of the sample the stream plays (default 100)")
    parser.add_argument("--batch-size", type=int, default=4, help="the pipeline's batch max_size (default 4)")
    parser.add_argument("--max-delay-ms", type=float, default=5.0, help="the pipeline's batch max_delay_ms (default 5)")
    parser.add_argument("--threads", type=int, default=4, help="runtime.threads (default 4)")
    parser.add_argument(
        "--intra-op-threads", type=int, default=0, help="ONNX Runtime threads of the in-process run (0 = all cores)"
    )
    parser.add_argument("--batch", default="4x3x352x640", help="the client part's batch shape (default 4x3x352x640)")
    parser.add_argument("--requests", type=int, default=40, help="requests per client run (default 40)")
    parser.add_argument("--concurrency", default="1,2", help="requests out at once in the client part (default 1,2)")
    parser.add_argument("--max-batch", type=int, default=8, help="the server's max_batch_size (default 8)")
    parser.add_argument(
        "--triton-python",
        type=Path,
        default=TRITON_VENV / "bin" / "python",
        help="the Python of the Triton venv (PyTriton and tritonclient; default .venv-triton, from `make servers`)",
    )
    parser.add_argument("--skip-pipeline", action="store_true", help="only the client part")
    parser.add_argument("--skip-clients", action="store_true", help="only the pipeline part")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each contender, interleaved; the tables show the fastest"
    )
    parser.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    args = parser.parse_args(argv)
    args.concurrency_levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    return args


def print_machine() -> None:
    import onnxruntime as ort

    cores = os.cpu_count() or 1
    print(
        f"machine: {cpu_model()}, {cores} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__}"
    )
    print(
        f"the server (Triton, its model on ONNX Runtime with all {cores} cores), the pipeline and the clients "
        f"share these {cores} cores: a remote run pays for its client's CPU time out of the model's"
    )
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.triton_python.is_file():
        print(f"no {args.triton_python}: run `make servers` first (or pass --triton-python)", file=sys.stderr)
        return 2
    ensure_sample()
    card = load_model_card(MODEL, ROOT)
    onnx = model_path(card)  # pulls the model file on first use, as `streamgraph models pull` does
    print_machine()

    with tempfile.TemporaryDirectory(prefix="streamgraph-bench-remote-") as tmp:
        work = Path(tmp)
        began = time.monotonic()
        with triton(args.triton_python, onnx, args.max_batch, work / "triton.log") as server:
            print(
                f"Triton up in {time.monotonic() - began:.1f} s: {server.http_url}, {server.grpc_url}, "
                f"{SERVED} with max_batch_size {args.max_batch}",
                flush=True,
            )
            frame = [3, *card.preprocess.size] if card.preprocess else parse_shape(args.batch)[1:]
            for shape in {tuple(frame), tuple(parse_shape(args.batch)[1:])}:
                asyncio.run(warm_server(card, server.http_url, list(shape), args.max_batch))
            if not args.skip_pipeline:
                clip, frames = cut_clip(SAMPLE, args.frames, work)
                print(
                    f"\n1. the pipeline: 1 stream of {frames} frames ({SAMPLE.name}) at rate max, batch "
                    f"{{max_size: {args.batch_size}, max_delay_ms: {args.max_delay_ms:g}}}",
                    flush=True,
                )
                with NatsServer() as nats:
                    runs = asyncio.run(pipeline_part(args, server, nats.url, clip))
                print_tables(
                    "the pipeline (best of each)" if args.repeat > 1 else "the pipeline",
                    pipeline_rows(runs),
                    pipeline_verdict(runs),
                    args.markdown,
                )
            if not args.skip_clients:
                print(
                    f"\n2. the client alone: batch {args.batch} float32, {args.requests} requests per run, "
                    f"{' and '.join(map(str, args.concurrency_levels))} out at once",
                    flush=True,
                )
                clients = client_part(args, card, server)
                print_tables(
                    "the client against tritonclient (best of each)"
                    if args.repeat > 1
                    else "the client against tritonclient",
                    client_rows(clients),
                    client_verdict(clients),
                    args.markdown,
                )
    print(f"\nload average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
