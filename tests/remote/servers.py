"""Real inference servers as child processes: servers/triton_serve.py and servers/kserve_serve.py,
each run by the Python of its own venv (``make servers``), on free loopback ports.

A server can be killed (SIGKILL, the whole process tree: an outage) and started again on the same
ports; its stdout and stderr go to a log file, quoted when it does not come up.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from pipeline.bus import free_port as free_port  # the one way tests pick a port

ROOT = Path(__file__).resolve().parents[2]
TRITON_VENV = ROOT / ".venv-triton"
KSERVE_VENV = ROOT / ".venv-kserve"
TRITON_SCRIPT = ROOT / "servers" / "triton_serve.py"
KSERVE_SCRIPT = ROOT / "servers" / "kserve_serve.py"
START_TIMEOUT_S = 90.0


class ServerError(RuntimeError):
    """A server did not come up; the message ends with its log."""


TRITON_ACCESS_TOKEN = "streamgraph-tests"
"""The test Triton's ``--access-token``: its shared-memory API wants it in a ``triton-access-token``
header, as a Triton started with ``--http-restricted-api`` would."""


def venv_python(venv: Path, what: str) -> Path:
    """The venv's Python; where ``make servers`` has not made it, skip (fail in CI, which must run it)."""
    python = venv / "bin" / "python"
    if (venv / ".installed").is_file() and python.is_file():
        return python
    message = f"{what}: no {venv.name} venv here; run `make servers` (or `make test`, which makes it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass
class ServerProcess:
    """One server script as a child process in a session of its own (so a kill takes its children)."""

    kind: str
    python: Path
    script: Path
    models: dict[str, Path]
    ports: dict[str, int]
    """Command-line flag -> port: ``--http-port``, ``--grpc-port`` and any the script has besides."""
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    options: tuple[str, ...] = ()
    """Further command-line options of the script."""
    process: subprocess.Popen[bytes] | None = None

    @property
    def model(self) -> str:
        """The first model it serves (the tests' pp_ocrv4_det)."""
        return next(iter(self.models))

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['--http-port']}"

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.ports['--grpc-port']}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        command = [str(self.python), str(self.script)]
        for name, path in self.models.items():
            command += ["--model", f"{name}={path}"]
        for flag, port in self.ports.items():
            command += [flag, str(port)]
        return command + list(self.options)

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start on this server's ports and wait until ``/v2/health/ready`` (and each model's) answers 200."""
        assert not self.running, f"the {self.kind} server is running already"
        _wait_ports_free(list(self.ports.values()), timeout_s=15)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {' '.join(self.command())}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout_s)
        except ServerError:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL the server and every process under it (Triton's tritonserver and stubs), then wait."""
        if self.process is None:
            return
        process, self.process = self.process, None
        # Collected before the kill: once their parent is gone, children no longer point back to it.
        doomed = descendants(process.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # start_new_session: its group id is its pid
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=15)

    def restart(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start again on the same ports (after a kill, or kill first); waits until it is ready."""
        self.kill()
        self.start(timeout_s)

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL whatever is left."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)
        self.kill()  # children a clean stop left behind, if any

    def log_tail(self, chars: int = 6000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text[-chars:]

    def _ready(self) -> bool:
        """Server ready, and each model: PyTriton loads its models after tritonserver says ready."""
        urls = [f"{self.http_url}/v2/health/ready"] + [f"{self.http_url}/v2/models/{m}/ready" for m in self.models]
        return all(_answers_200(url) for url in urls) and _port_open(self.ports["--grpc-port"])

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise ServerError(
                    f"the {self.kind} server exited with {code} while starting; its log:\n{self.log_tail()}"
                )
            if self._ready():
                return
            time.sleep(0.2)
        raise ServerError(
            f"the {self.kind} server was not ready at {self.http_url} within {timeout_s:.0f} s; "
            f"its log ({self.log_path}):\n{self.log_tail()}"
        )


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _port_free(port: int) -> bool:
    """Whether a server could listen on the port now (SO_REUSEADDR, as servers set it: TIME_WAIT is fine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def _wait_ports_free(ports: list[int], timeout_s: float) -> None:
    """A killed server's children may hold its ports for a moment after it is gone."""
    deadline = time.monotonic() + timeout_s
    while not all(_port_free(port) for port in ports):
        if time.monotonic() > deadline:
            busy = [port for port in ports if not _port_free(port)]
            raise ServerError(f"ports {busy} are still in use after {timeout_s:.0f} s")
        time.sleep(0.1)


def descendants(pid: int) -> list[int]:
    """Every process under ``pid``, from /proc (Linux): those that left its process group too."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name (2nd field) may hold spaces and parentheses: the ppid follows the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


@dataclass(frozen=True)
class ReferenceModel:
    """A model the servers serve, run here on ONNX Runtime too: what their answers must equal."""

    name: str
    """The name the servers serve it under (``pp_ocrv4_det``)."""
    path: Path
    inputs: list[str]
    outputs: list[str]

    @property
    def input(self) -> str:
        return self.inputs[0]

    @property
    def output(self) -> str:
        return self.outputs[0]

    def run(self, *arrays: np.ndarray) -> list[np.ndarray]:
        """The outputs, in order, for the inputs, in order."""
        results = _session(self.path).run(self.outputs, dict(zip(self.inputs, arrays, strict=True)))
        return [np.asarray(result) for result in results]


@functools.cache
def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
