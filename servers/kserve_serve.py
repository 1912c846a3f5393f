"""A real KServe ModelServer (the ``kserve`` Python package) serving ONNX models on ONNX Runtime (CPU).

Each ``--model NAME=PATH.onnx`` becomes a custom ``kserve.Model`` whose session runs in a thread
(ONNX Runtime releases the GIL, so requests overlap). The server answers:

* KServe v2 over REST: ``/v2/health/{live,ready}``, ``/v2/models/<m>`` (metadata: names, datatypes
  and full shapes from the ONNX file, -1 for the batch axis and every other dynamic axis),
  ``/v2/models/<m>/ready`` and ``/v2/models/<m>/infer`` with JSON tensors;
* the v2 **binary tensor data extension** too: kserve 0.21 reads a request body whose JSON header
  is followed by raw tensors (``Inference-Header-Content-Length`` header, per-input
  ``parameters.binary_data_size``) and answers in binary when asked, by the request parameter
  ``binary_data_output`` or an output's ``parameters.binary_data`` (then the reply carries
  ``Inference-Header-Content-Length``). An output that names no ``binary_data`` of its own follows
  ``binary_data_output`` here, as on Triton (kserve alone would fall back to JSON);
* KServe v2 over **gRPC** (``inference.GRPCInferenceService``, ModelServer's ``enable_grpc``, on
  by default) on ``--grpc-port``: ServerReady, ModelMetadata, ModelInfer (raw tensors or typed
  contents);
* ``/v1/models/<m>:predict`` in **TensorFlow Serving's REST format**, as a TF Serving client sends it:
  columnar ``{"inputs": {name: nested list}}`` (or ``{"inputs": nested list}`` for a model with one
  input) -> ``{"outputs": {name: nested list}}``, or ``{"outputs": nested list}`` when the model has
  one output, exactly as TF Serving answers; and row ``{"instances": [...]}`` -> ``{"predictions":
  [...]}`` (per row: the value for one output, else ``{name: value}``). Errors are HTTP 400 with
  ``{"error": "..."}``. ``/v1/models/<m>`` answers readiness.

Run it with the Python of ``.venv-kserve`` (``make servers`` makes it)::

    .venv-kserve/bin/python servers/kserve_serve.py --model pp_ocrv4_det=/path/to/det.onnx \\
        --http-port 8080 --grpc-port 8081

It prints ``ready: http=<port> grpc=<port>`` once both ports answer; SIGTERM or SIGINT stops it.
Like KServe's own images it listens on all interfaces.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx_model import OnnxModel, ServeError, add_model_arguments, announce_ready, fail, load_models

# How long in-flight requests may finish when stopping: short, so a stop is quick.
GRACE_PERIOD_S = 2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--grpc-port", type=int, default=8081)
    return parser.parse_args(argv)


def make_model_class() -> type:
    """The kserve.Model subclass, built after ``import kserve`` (see main: kserve reads sys.argv on import)."""
    import kserve
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse, RequestedOutput

    class OnnxKServeModel(kserve.Model):  # type: ignore[misc]  # kserve has no type hints
        def __init__(self, model: OnnxModel) -> None:
            super().__init__(model.name)
            self.model = model
            self.ready = True  # the session is loaded already: ModelServer only registers ready models

        def get_input_types(self) -> list[dict[str, Any]]:
            return [tensor.v2_metadata() for tensor in self.model.inputs]

        def get_output_types(self) -> list[dict[str, Any]]:
            return [tensor.v2_metadata() for tensor in self.model.outputs]

        async def predict(
            self, payload: Any, headers: dict[str, str] | None = None, response_headers: Any = None
        ) -> Any:
            # v2 (REST and gRPC) arrives decoded as an InferRequest, v1 as the parsed JSON body.
            if isinstance(payload, InferRequest):
                return await self._predict_v2(payload)
            if isinstance(payload, bytes | str):
                # kserve hands v1 bodies not sent as application/json over undecoded; TF Serving
                # parses whatever the Content-Type, so do the same.
                try:
                    payload = json.loads(payload)
                except ValueError as exc:
                    raise InvalidInput(f"the request body is not JSON: {exc}") from None
            if not isinstance(payload, dict):
                raise InvalidInput('expected a JSON object with "inputs" or "instances"')
            return await self._predict_v1(payload)

        async def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            for name, array in feeds.items():
                problem = self.model.input_problem(name, array)
                if problem is not None:
                    raise InvalidInput(problem)
            missing = [name for name in self.model.input_names if name not in feeds]
            if missing:
                raise InvalidInput(f"missing inputs: {', '.join(missing)}")
            # Off the event loop: health checks and other requests go on while ONNX Runtime runs.
            return await asyncio.get_running_loop().run_in_executor(None, self.model.run, feeds)

        async def _predict_v2(self, request: Any) -> Any:
            feeds = {tensor.name: tensor.as_numpy() for tensor in request.inputs}
            results = await self._run(feeds)
            outputs = [self._output(t.name, t.datatype, results[t.name]) for t in self.model.outputs]
            requested = request.request_outputs
            if requested:
                unknown = [out.name for out in requested if out.name not in results]
                if unknown:
                    raise InvalidInput(f"unknown outputs requested: {', '.join(unknown)}")
                # Only those asked for (kserve's gRPC encoder would send them all), and an output
                # without its own binary_data follows binary_data_output, as on Triton.
                outputs = [output for output in outputs if any(out.name == output.name for out in requested)]
                default = bool(request.use_binary_outputs)
                requested = [
                    RequestedOutput(
                        out.name,
                        {
                            **(out.parameters or {}),
                            "binary_data": default if out.binary_data is None else out.binary_data,
                        },
                    )
                    for out in requested
                ]
            return InferResponse(
                # KServe answers 500 without a response id: echo the request's, as Triton does.
                response_id=request.id or "",
                model_name=self.name,
                infer_outputs=outputs,
                use_binary_outputs=request.use_binary_outputs,
                requested_outputs=requested,
            )

        @staticmethod
        def _output(name: str, datatype: str, value: np.ndarray) -> Any:
            """An output holding raw bytes, which kserve turns into JSON, binary REST or gRPC as asked.

            Not the array itself: kserve 0.21's to_grpc tests an array's truth value when the request
            came with raw_input_contents, and fails (ValueError: ... ambiguous, gRPC INTERNAL).
            """
            output = InferOutput(name=name, shape=list(value.shape), datatype=datatype)
            output.set_data_from_numpy(value, binary_data=True)
            output.parameters = None  # set_data_from_numpy's binary_data_size: REST sets its own, gRPC has none
            return output

        async def _predict_v1(self, body: dict[str, Any]) -> dict[str, Any]:
            if "instances" in body:
                return await self._predict_rows(body["instances"])
            if "inputs" in body:
                return await self._predict_columns(body["inputs"])
            raise InvalidInput('expected "inputs" (columnar) or "instances" (row) in the request body')

        async def _predict_columns(self, inputs: Any) -> dict[str, Any]:
            names = self.model.input_names
            if not isinstance(inputs, dict):
                if len(names) != 1:
                    raise InvalidInput(f'"inputs" must name the model\'s inputs: {", ".join(names)}')
                inputs = {names[0]: inputs}
            results = await self._run({name: self._array(name, value) for name, value in inputs.items()})
            if len(results) == 1:  # TF Serving's own shortcut: one output is the value itself
                return {"outputs": next(iter(results.values())).tolist()}
            return {"outputs": {name: value.tolist() for name, value in results.items()}}

        async def _predict_rows(self, instances: Any) -> dict[str, Any]:
            names = self.model.input_names
            if not isinstance(instances, list) or not instances:
                raise InvalidInput('"instances" must be a non-empty list')
            if all(isinstance(row, dict) for row in instances):
                columns = {name: [row.get(name) for row in instances] for name in instances[0]}
            elif len(names) == 1:
                columns = {names[0]: instances}
            else:
                raise InvalidInput(f"each instance must be an object naming the inputs: {', '.join(names)}")
            results = await self._run({name: self._array(name, value) for name, value in columns.items()})
            if len(results) == 1:
                return {"predictions": next(iter(results.values())).tolist()}
            rows = len(next(iter(results.values())))
            return {"predictions": [{name: value[i].tolist() for name, value in results.items()} for i in range(rows)]}

        def _array(self, name: str, value: Any) -> np.ndarray:
            tensor = next((t for t in self.model.inputs if t.name == name), None)
            if tensor is None:
                raise InvalidInput(f"model {self.name!r} has no input {name!r}")
            try:
                return np.asarray(value, dtype=tensor.dtype)
            except (TypeError, ValueError) as exc:  # ragged lists, strings where numbers belong
                raise InvalidInput(f"input {name!r}: not a {tensor.datatype} tensor: {exc}") from None

    return OnnxKServeModel


def announce_when_serving(http_port: int, grpc_port: int, timeout_s: float = 120) -> None:
    """Print the ready line once REST answers ready and the gRPC port accepts connections.

    ModelServer.start blocks and offers no hook for "listening", so a thread asks from outside.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _http_ready(http_port) and _port_open(grpc_port):
            announce_ready(http_port, grpc_port)
            return
        time.sleep(0.1)
    print(f"error: KServe did not answer on ports {http_port}/{grpc_port} within {timeout_s:.0f} s", file=sys.stderr)


def _http_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def main() -> None:
    args = parse_args()
    # kserve parses sys.argv when imported (its own --http_port, --model_name...): hide ours from it.
    sys.argv = sys.argv[:1]
    try:
        models = load_models(args.models, args.ort_threads)
    except ServeError as exc:
        fail(str(exc))
    for port in (args.http_port, args.grpc_port):
        if _port_open(port):
            fail(f"port {port} is in use already")

    import kserve

    model_class = make_model_class()
    server = kserve.ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        enable_grpc=True,
        enable_latency_logging=False,
        grace_period=GRACE_PERIOD_S,
    )
    threading.Thread(target=announce_when_serving, args=(args.http_port, args.grpc_port), daemon=True).start()
    server.start([model_class(model) for model in models])


if __name__ == "__main__":
    main()
