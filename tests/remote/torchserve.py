"""TorchServe as a child process for the tests: ``torchserve --foreground`` from the
``.venv-torchserve`` venv (Java 17 on PATH) on free ports in a temp folder, each model archived
with servers/torchserve/tensor_handler.py.

TorchServe 0.12's Python worker imports torch, only to recognise a handler's ``torch.Tensor``
answers. Where the venv has no torch (CPU torch is a 190 MB wheel, 1 GB installed, from
download.pytorch.org, not PyPI), the worker gets a stand-in ``torch`` module with just a
``Tensor`` class on its ``PYTHONPATH``: the tensor handler never makes one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.remote.servers import ROOT, free_port

TORCHSERVE_VENV = Path(os.environ.get("STREAMGRAPH_TORCHSERVE_VENV", ROOT / ".venv-torchserve"))
HANDLER = ROOT / "servers" / "torchserve" / "tensor_handler.py"
START_TIMEOUT_S = 120.0
TORCH_STAND_IN = (
    '"""Stand-in for torch: TorchServe imports it to recognise torch.Tensor answers."""\n\n\nclass Tensor:\n    pass\n'
)


def empty_request(url: str, model: str) -> urllib.request.Request:
    """The tensor handler's readiness request: an empty octet-stream body (urllib's default
    content type is a form's, which TorchServe passes to the handler as no body at all)."""
    return urllib.request.Request(
        f"{url}/predictions/{model}", data=b"", headers={"Content-Type": "application/octet-stream"}
    )


class TorchServe:
    """``torchserve --foreground`` as a child process in a session of its own (Java and its workers)."""

    def __init__(self, venv: Path, models: dict[str, Path], work: Path) -> None:
        self.venv = venv
        self.models = models
        """Name -> ONNX file, each archived with the tensor handler."""
        self.work = work
        self.port = free_port()
        self.log_path = work / "torchserve.log"
        config = work / "config.properties"
        config.write_text(
            f"inference_address=http://127.0.0.1:{self.port}\n"
            f"management_address=http://127.0.0.1:{free_port()}\n"
            f"metrics_address=http://127.0.0.1:{free_port()}\n"
            "default_workers_per_model=1\n"
            # yolov4-tiny's batch of 4 is 8.3 MB, over the 6.5 MB default (servers/torchserve/README.md).
            "max_request_size=104857600\n"
            "max_response_size=104857600\n"
            "install_py_dep_per_model=false\n"
            "disable_token_authorization=true\n"
            # Where it unpacks the archive (/tmp/models by default, left there after a kill).
            f"vmargs=-Djava.io.tmpdir={work}\n"
        )
        self.command = [
            str(venv / "bin" / "torchserve"),
            *("--start", "--foreground", "--ncs", "--disable-token-auth"),
            *("--model-store", str(work / "store"), "--models", *(f"{name}={name}.mar" for name in models)),
            *("--ts-config", str(config)),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def model(self) -> str:
        """The first model it serves (the tests' pp_ocrv4_det)."""
        return next(iter(self.models))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def archive(self) -> None:
        """Each model as a ``.mar`` in the model store, with ``torch-model-archiver``."""
        store = self.work / "store"
        store.mkdir()
        for name, path in self.models.items():
            archive = [
                str(self.venv / "bin" / "torch-model-archiver"),
                *("--model-name", name, "--version", "1", "--handler", str(HANDLER)),
                *("--serialized-file", str(path), "--export-path", str(store)),
            ]
            subprocess.run(archive, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        env = {
            **os.environ,
            "PATH": f"{self.venv / 'bin'}:{os.environ.get('PATH', '')}",
            # Its pid file goes to the temp dir, and a second TorchServe there refuses to start.
            "TMPDIR": str(self.work),
            "LOG_LOCATION": str(self.work / "logs"),
            "METRICS_LOCATION": str(self.work / "logs"),
        }
        if subprocess.run([str(self.venv / "bin" / "python"), "-c", "import torch"], capture_output=True).returncode:
            stand_in = self.work / "stand-in" / "torch"
            stand_in.mkdir(parents=True)
            (stand_in / "__init__.py").write_text(TORCH_STAND_IN)
            env["PYTHONPATH"] = str(stand_in.parent)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=self.work, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Until every model answers the empty readiness request (TorchServe answers 503 while a
        worker starts; /ping says Healthy before that)."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = list(self.models)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"torchserve exited with {self.process.returncode}:\n{self.log_tail()}", pytrace=False)
            if all(_answers(empty_request(self.url, model)) for model in waiting):
                return
            time.sleep(0.3)
        self.stop()
        pytest.fail(f"torchserve not ready within {START_TIMEOUT_S:.0f} s:\n{self.log_tail()}", pytrace=False)

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the workers, should any outlive Java
        process.wait(timeout=10)

    def log_tail(self, chars: int = 6000) -> str:
        logs = [self.log_path, *sorted((self.work / "logs").glob("*.log"))]
        return "\n".join(path.read_text(errors="replace")[-chars:] for path in logs if path.is_file())


def _answers(request: urllib.request.Request) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=5) as response:
        return bool(response.status == 200)
    return False
