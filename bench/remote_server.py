"""The Triton server of bench/remote.py: the model's name on it, starting it as the tests do, and
reading its CPU time (with its child processes) from /proc.

Imported by bench/remote.py and bench/remote_clients.py, after bench/remote.py has put the
repository root and bench/ on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from tests.remote.servers import TRITON_SCRIPT, ServerProcess, descendants, free_port

SERVED = "pp_ocrv4_det"
"""The model's name on the server."""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def triton(python: Path, onnx: Path, max_batch: int, log_path: Path) -> Iterator[ServerProcess]:
    """servers/triton_serve.py started as the tests start it, ready (the model loaded) on return."""
    ports = {flag: free_port() for flag in ("--http-port", "--grpc-port", "--metrics-port")}
    options = ("--max-batch", str(max_batch))
    server = ServerProcess("triton", python, TRITON_SCRIPT, {SERVED: onnx}, ports, log_path, options=options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def server_cpu_s(server: ServerProcess) -> float:
    """CPU time (user and system) so far of the server and every process under it
    (``tritonserver``, PyTriton's model proxy and Python backend stub), from /proc."""
    assert server.process is not None
    ticks = 0
    for pid in [server.process.pid, *descendants(server.process.pid)]:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        ticks += int(fields[11]) + int(fields[12])  # utime and stime: fields 14 and 15
    return ticks / CLOCK_TICKS
