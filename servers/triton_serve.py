"""A real NVIDIA Triton Inference Server serving ONNX models, each run by ONNX Runtime on the CPU.

PyTriton (``nvidia-pytriton``) ships the ``tritonserver`` binary and binds a Python function as a
model: Triton answers the KServe v2 protocol over HTTP and gRPC (metadata, readiness, infer with
JSON or binary tensors), queues requests and batches them (dynamic batching); the bound function
runs the ONNX file's session on each batch. Tensor names, dtypes and shapes come from the ONNX
file: its first axis is the batch axis (Triton's ``max_batch_size``), so v2 metadata shows it as -1
like every other dynamic axis.

Run it with the Python of ``.venv-triton`` (``make servers`` makes it; ``make triton`` runs the
OCR models on 8000/8001/8002)::

    .venv-triton/bin/python servers/triton_serve.py --model pp_ocrv4_det=/path/to/det.onnx \\
        --http-port 8000 --grpc-port 8001 --metrics-port 8002

It prints ``ready: http=<port> grpc=<port>`` once the models are loaded; SIGTERM or SIGINT stops
it within a few seconds (a second one exits at once). Triton listens on all interfaces.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from onnx_model import (
    OnnxModel,
    ServeError,
    add_model_arguments,
    announce_ready,
    fail,
    load_models,
    stop_event,
)

# How long Triton waits for in-flight requests when stopping: short, so a stop is quick.
EXIT_TIMEOUT_S = 2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--max-batch", type=int, default=8, help="Triton's max_batch_size per model")
    parser.add_argument(
        "--access-token",
        default=None,
        help="restrict Triton's shared-memory, model-repository, statistics, trace and logging APIs to requests "
        "with this 'triton-access-token' header (default: none restricted, as tritonserver itself starts)",
    )
    return parser.parse_args(argv)


def prepare_library_path() -> None:
    """Triton's Python backend stub links libpython3.X.so: point the loader at this Python's copy.

    The stub is a child of tritonserver, a child of this process, so it inherits the variable;
    PyTriton appends its own bundled libraries (nvidia_pytriton.libs) when it starts tritonserver.
    Without this, a Python built outside the system (pyenv, uv) gets the system's libpython of
    another patch release, or none at all.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        current = os.environ.get("LD_LIBRARY_PATH", "")
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


def infer_function(model: OnnxModel) -> Callable[[list[Any]], list[dict[str, np.ndarray]]]:
    """PyTriton's inference callable: a list of requests in, one dict of outputs per request out.

    The dynamic batcher hands over several requests at once. Requests are concatenated along the
    batch axis only where their other axes agree (two frame sizes cannot share a tensor), so each
    group is one ONNX Runtime run, and its outputs are split back by each request's batch size.
    """

    def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for index, request in enumerate(requests):
            key = tuple(tuple(request[name].shape[1:]) for name in model.input_names)
            groups.setdefault(key, []).append(index)
        responses: list[dict[str, np.ndarray]] = [{} for _ in requests]
        for indices in groups.values():
            feeds = {name: np.concatenate([requests[i][name] for i in indices]) for name in model.input_names}
            outputs = model.run(feeds)
            sizes = [len(requests[i][model.input_names[0]]) for i in indices]
            splits = np.cumsum(sizes)[:-1]
            for name, value in outputs.items():
                for index, part in zip(indices, np.split(value, splits), strict=True):
                    responses[index][name] = part
        return responses

    return infer


def serve(args: argparse.Namespace, models: list[OnnxModel]) -> None:
    # Imported here, not at the top: argument and model errors are reported without waiting for it.
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    stop = stop_event()
    config = TritonConfig(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        exit_timeout_secs=EXIT_TIMEOUT_S,
    )
    # PyTriton restricts those APIs with a random token by default; tritonserver restricts none.
    security = (
        TritonSecurityConfig(access_token=args.access_token)
        if args.access_token
        else TritonSecurityConfig(restricted_endpoints=[])
    )
    triton = Triton(config=config, security_config=security)
    try:
        for model in models:
            triton.bind(
                model_name=model.name,
                infer_func=infer_function(model),
                # Without the batch axis: max_batch_size > 0 makes Triton add it (shown as -1).
                inputs=[Tensor(name=t.name, dtype=t.dtype, shape=t.shape[1:]) for t in model.inputs],
                outputs=[Tensor(name=t.name, dtype=t.dtype, shape=t.shape[1:]) for t in model.outputs],
                config=ModelConfig(max_batch_size=args.max_batch, batcher=DynamicBatcher()),
            )
        try:
            triton.run()
        except Exception as exc:  # PyTriton raises several types; tritonserver's own log says why above
            raise ServeError(f"Triton did not start (a port in use? see tritonserver's log above): {exc}") from None
        announce_ready(args.http_port, args.grpc_port)
        while not stop.wait(1.0):
            if not triton.is_alive():
                raise ServeError("the Triton server or a model's proxy exited")
    finally:
        _stop_quietly(triton)


def _stop_quietly(triton: Any) -> None:
    """Stop Triton; after a failed start PyTriton's cleanup itself fails, which would bury the reason."""
    try:
        triton.stop()
    except Exception as exc:
        print(f"(stopping Triton: {type(exc).__name__}: {exc})", file=sys.stderr, flush=True)


def main() -> None:
    args = parse_args()
    try:
        models = load_models(args.models, args.ort_threads)
        prepare_library_path()
        serve(args, models)
    except ServeError as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
