"""The anchor of bench/remote.py: NVIDIA's own Triton client (``tritonclient``, aio HTTP and gRPC),
driven exactly as bench/remote.py drives ours.

bench/remote.py runs it with the Python of ``.venv-triton`` (which has ``tritonclient``; this
project's venv does not) and reads the one JSON object it prints::

    .venv-triton/bin/python bench/remote_anchor.py --url http://127.0.0.1:8000 --model pp_ocrv4_det \\
        --input x --output sigmoid_0.tmp_0 --batch 4x3x352x640 --requests 50 --concurrency 2

``drive`` is the load both sides get (bench/remote.py imports it for our client): ``concurrency``
requests out at once, ``requests`` in all after a warm-up, each one building its request from the
array as a caller would (binary tensors over HTTP, raw contents over gRPC). It returns each
request's latency, the wall time, the CPU time of this process (what the client itself costs: the
server runs in another process, on the same cores) and how many requests it sent in all, warm-up
included. ``batch_array`` is the batch both send.

This module imports only the standard library and numpy at its top: it runs in either venv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

SEED = 20240601


def batch_array(shape: Sequence[int]) -> np.ndarray:
    """The batch every client sends: uniform float32 in [0, 1), the same values in both venvs."""
    return np.random.default_rng(SEED).random(tuple(shape), dtype=np.float32)


def parse_shape(text: str) -> list[int]:
    """``4x3x352x640`` -> ``[4, 3, 352, 640]``."""
    return [int(part) for part in text.lower().split("x")]


async def drive(
    infer_once: Callable[[], Awaitable[Any]], requests: int, concurrency: int, warmup: int = 4
) -> dict[str, Any]:
    """``warmup`` requests (connections made, the server's first runs of the shape), then
    ``requests`` more with ``concurrency`` out at once. Latency: from building the request to
    having the output as an array."""

    async def worker(todo: list[int], latencies: list[float]) -> None:
        while todo:
            todo.pop()
            began = time.perf_counter()
            await infer_once()
            latencies.append((time.perf_counter() - began) * 1000.0)

    warm: list[float] = []
    await asyncio.gather(*(worker(list(range(max(1, warmup // concurrency))), warm) for _ in range(concurrency)))
    todo = list(range(requests))
    latencies: list[float] = []
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(todo, latencies) for _ in range(concurrency)))
    return {
        "latencies_ms": latencies,
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "sent": len(warm) + len(latencies),
    }


async def run_tritonclient(args: argparse.Namespace) -> dict[str, Any]:
    batch = batch_array(parse_shape(args.batch))
    grpc = args.url.startswith("grpc://")
    if grpc:
        import tritonclient.grpc.aio as client_module
    else:
        import tritonclient.http.aio as client_module  # type: ignore[no-redef]
    address = args.url.split("://", 1)[1]
    if grpc:  # one channel (HTTP/2) carries every request, as ours does
        client = client_module.InferenceServerClient(url=address)
    else:  # a pool of as many keep-alive connections as requests out at once, as ours has
        client = client_module.InferenceServerClient(url=address, conn_limit=args.concurrency)
    binary = {} if grpc else {"binary_data": True}  # raw bytes: gRPC always, HTTP with this

    async def infer_once() -> np.ndarray:
        tensor = client_module.InferInput(args.input, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, **binary)
        wanted = [client_module.InferRequestedOutput(args.output, **binary)]
        result = await client.infer(args.model, [tensor], outputs=wanted)
        return result.as_numpy(args.output)

    try:
        result = await drive(infer_once, args.requests, args.concurrency)
    finally:
        await client.close()
    result["client"] = f"tritonclient {'grpc' if grpc else 'http'}.aio {_version()}"
    return result


def _version() -> str:
    from importlib.metadata import version

    return version("tritonclient")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", required=True, help="http://host:port or grpc://host:port")
    parser.add_argument("--model", required=True, help="the model's name on the server")
    parser.add_argument("--input", required=True, help="the input tensor's name")
    parser.add_argument("--output", required=True, help="the output tensor's name")
    parser.add_argument("--batch", default="4x3x352x640", help="the input's shape (default 4x3x352x640)")
    parser.add_argument("--requests", type=int, default=50, help="requests measured (default 50)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests out at once (default 1)")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run_tritonclient(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
