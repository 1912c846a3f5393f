"""Part 2 of bench/remote.py, the client alone: our engine (``RemoteEngine.infer_async``) and
NVIDIA's ``tritonclient`` (bench/remote_anchor.py, in the Triton venv) sending the same batch to the
same server, the runs' figures, and their table and verdict.

Imported by bench/remote.py, after it has put the repository root and bench/ on ``sys.path``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from batching import percentile
from remote_anchor import batch_array, drive, parse_shape
from remote_server import SERVED, server_cpu_s

from pipeline.engines.base import RunSettings
from pipeline.engines.remote import RemoteEngine, TritonOptions, load_triton
from pipeline.engines.remote.options import TritonServerOptions
from pipeline.modelcard import ModelCard
from tests.remote.servers import ServerProcess

ANCHOR = Path(__file__).resolve().parent / "remote_anchor.py"


@dataclass
class ClientRun:
    client: str
    protocol: str
    concurrency: int
    latencies_ms: list[float]
    wall_s: float
    cpu_s: float
    """The client process's CPU time over the measured requests."""
    server_cpu_s: float
    """The server's CPU time over the whole run: ``sent`` requests, warm-up included."""
    sent: int

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000.0 * self.cpu_s / max(1, len(self.latencies_ms))

    @property
    def server_cpu_ms_per_request(self) -> float:
        return 1000.0 * self.server_cpu_s / max(1, self.sent)

    def percentile(self, q: float) -> float:
        return percentile(np.asarray(self.latencies_ms), q)


@contextlib.asynccontextmanager
async def our_engine(
    card: ModelCard, url: str, max_in_flight: int, max_batch: int, *, shared_memory: bool = False
) -> AsyncIterator[RemoteEngine]:
    """Our engine for the model on the server, opened (the server and the model checked) as the
    ``infer`` stage opens it."""
    server = TritonServerOptions(url=url, model=SERVED, max_in_flight=max_in_flight, shared_memory=shared_memory)
    engine = load_triton(card, TritonOptions(server=server), RunSettings(max_batch=max_batch))
    await engine.open()
    try:
        yield engine
    finally:
        await engine.close()


async def warm_server(card: ModelCard, url: str, frame: list[int], largest: int) -> None:
    """The server's first run of a batch size is several times slower (ONNX Runtime plans the
    shape): one of each size up to ``largest`` (its dynamic batcher may merge two requests) before
    anything is measured, so no contender pays for them."""
    async with our_engine(card, url, 1, largest) as engine:
        for size in range(1, largest + 1):
            await engine.infer_async({card.inputs[0].name: batch_array([size, *frame])})


async def ours(
    card: ModelCard, url: str, shape: list[int], requests: int, concurrency: int, *, shared_memory: bool = False
) -> dict[str, Any]:
    """Our engine as the ``infer`` stage runs it: ``infer_async`` with ``max_in_flight`` = concurrency."""
    feeds = {card.inputs[0].name: batch_array(shape)}
    async with our_engine(card, url, concurrency, shape[0], shared_memory=shared_memory) as engine:
        result = await drive(lambda: engine.infer_async(feeds), requests, concurrency)
        result["client"] = f"ours ({engine.transport.protocol})"
    return result


def theirs(python: Path, card: ModelCard, url: str, batch: str, requests: int, concurrency: int) -> dict[str, Any]:
    """NVIDIA's tritonclient (aio) in the Triton venv: bench/remote_anchor.py, one JSON object back."""
    command = [
        str(python),
        str(ANCHOR),
        f"--url={url}",
        f"--model={SERVED}",
        f"--input={card.inputs[0].name}",
        f"--output={card.outputs[0].name}",
        f"--batch={batch}",
        f"--requests={requests}",
        f"--concurrency={concurrency}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the tritonclient anchor failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def client_part(args: argparse.Namespace, card: ModelCard, server: ServerProcess) -> list[ClientRun]:
    shape = parse_shape(args.batch)
    runs: dict[tuple[str, str, int], list[ClientRun]] = {}
    for concurrency in args.concurrency_levels:
        for repeat in range(args.repeat):
            for protocol, url, sides in (
                ("HTTP", server.http_url, ("ours", "tritonclient")),
                ("gRPC", server.grpc_url, ("ours", "tritonclient")),
                ("HTTP shm", server.http_url, ("ours",)),  # inputs through shared memory: ours alone
            ):
                for side in sides:
                    server_cpu = server_cpu_s(server)
                    if side == "ours":
                        shm = protocol.endswith("shm")
                        result = asyncio.run(ours(card, url, shape, args.requests, concurrency, shared_memory=shm))
                    else:
                        result = theirs(args.triton_python, card, url, args.batch, args.requests, concurrency)
                    run = ClientRun(
                        client=side,
                        protocol=protocol,
                        concurrency=concurrency,
                        latencies_ms=result["latencies_ms"],
                        wall_s=result["wall_s"],
                        cpu_s=result["cpu_s"],
                        server_cpu_s=server_cpu_s(server) - server_cpu,
                        sent=result["sent"],
                    )
                    runs.setdefault((protocol, side, concurrency), []).append(run)
                    print(
                        f"  {protocol:<8} x{concurrency} {result['client']:<44} {run.rate:6.2f} requests/s, "
                        f"p50 {run.percentile(50):.0f} ms (run {repeat + 1}/{args.repeat})",
                        flush=True,
                    )
    return [max(group, key=lambda run: run.rate) for group in runs.values()]


def client_rows(runs: list[ClientRun]) -> tuple[list[str], list[list[str]]]:
    theirs_by = {(r.protocol, r.concurrency): r for r in runs if r.client == "tritonclient"}
    header = [
        "protocol",
        "in flight",
        "client",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "client CPU ms/req",
        "server CPU ms/req",
        "ours/theirs",
    ]
    rows = []
    for run in sorted(runs, key=lambda r: (r.concurrency, r.protocol, r.client != "ours")):
        anchor = theirs_by.get((run.protocol, run.concurrency))
        ratio = f"{run.rate / anchor.rate:.2f}x" if run.client == "ours" and anchor and anchor.rate else ""
        rows.append(
            [
                run.protocol,
                f"{run.concurrency}",
                run.client,
                f"{run.rate:.2f}",
                f"{run.percentile(50):.0f}",
                f"{run.percentile(99):.0f}",
                f"{run.cpu_ms_per_request:.1f}",
                f"{run.server_cpu_ms_per_request:.0f}",
                ratio,
            ]
        )
    return header, rows


def client_verdict(runs: list[ClientRun]) -> list[str]:
    theirs_by = {(r.protocol, r.concurrency): r for r in runs if r.client == "tritonclient"}
    lines = []
    for run in runs:
        anchor = theirs_by.get((run.protocol, run.concurrency))
        if run.client != "ours" or anchor is None or not anchor.rate:
            continue
        ratio = run.rate / anchor.rate
        speed = "faster" if ratio > 1.05 else "as fast, within 5%" if ratio >= 0.95 else "slower"
        lines.append(
            f"{run.protocol} with {run.concurrency} in flight: ours {ratio:.2f}x tritonclient's "
            f"requests/s ({speed}); client CPU per request "
            f"{run.cpu_ms_per_request:.1f} ms against {anchor.cpu_ms_per_request:.1f} ms"
        )
    return lines
