"""TorchServeRest against a real TorchServe serving PP-OCRv4 det with servers/torchserve/tensor_handler.py.

The model is archived with ``torch-model-archiver`` from the ``.venv-torchserve`` venv and served
by ``torchserve --foreground`` (Java 17 on PATH) on free ports, in a temp folder. Without that
venv (or the one ``STREAMGRAPH_TORCHSERVE_VENV`` names; either with a ``.installed`` stamp) the
tests skip (fail where ``CI=true``), as the other servers' tests do.

TorchServe 0.12's Python worker imports torch, only to recognise a handler's ``torch.Tensor``
answers. Where the venv has no torch (CPU torch is a 190 MB wheel, 1 GB installed, from
download.pytorch.org, not PyPI), this test puts a stand-in ``torch`` module with just a
``Tensor`` class on the worker's ``PYTHONPATH``: the tensor handler never makes one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.engines import RemoteEngine
from pipeline.engines.base import RunSettings
from pipeline.engines.registry import check_engine, load_engine
from pipeline.engines.remote import HttpOnlyOptions
from pipeline.engines.remote.options import ServerOptions
from pipeline.engines.remote.torchserve import TorchServeRest, write_npz
from pipeline.engines.remote.transport import Rejected, ServerModel
from pipeline.modelcard import load_card
from tests.remote.servers import ROOT, ReferenceModel, free_port, venv_python

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

    def __init__(self, venv: Path, store: Path, model: str, work: Path) -> None:
        self.venv = venv
        self.model = model
        self.work = work
        self.port = free_port()
        self.log_path = work / "torchserve.log"
        config = work / "config.properties"
        config.write_text(
            f"inference_address=http://127.0.0.1:{self.port}\n"
            f"management_address=http://127.0.0.1:{free_port()}\n"
            f"metrics_address=http://127.0.0.1:{free_port()}\n"
            "default_workers_per_model=1\n"
            "install_py_dep_per_model=false\n"
            "disable_token_authorization=true\n"
            # Where it unpacks the archive (/tmp/models by default, left there after a kill).
            f"vmargs=-Djava.io.tmpdir={work}\n"
        )
        self.command = [
            str(venv / "bin" / "torchserve"),
            *("--start", "--foreground", "--ncs", "--disable-token-auth"),
            *("--model-store", str(store), "--models", f"{model}={model}.mar", "--ts-config", str(config)),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
        """Until the model answers the empty readiness request (TorchServe answers 503 while its
        worker starts; /ping says Healthy before that)."""
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"torchserve exited with {self.process.returncode}:\n{self.log_tail()}", pytrace=False)
            request = empty_request(self.url, self.model)
            with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
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


@pytest.fixture(scope="module")
def torchserve(det_model: ReferenceModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """TorchServe serving PP-OCRv4 det as ``pp_ocrv4_det`` with the tensor handler."""
    python = venv_python(TORCHSERVE_VENV, "TorchServe")
    work = tmp_path_factory.mktemp("torchserve")
    store = work / "store"
    store.mkdir()
    archive = [
        str(python.parent / "torch-model-archiver"),
        *("--model-name", det_model.name, "--version", "1", "--handler", str(HANDLER)),
        *("--serialized-file", str(det_model.path), "--export-path", str(store)),
    ]
    subprocess.run(archive, check=True, capture_output=True, timeout=120)
    server = TorchServe(TORCHSERVE_VENV, store, det_model.name, work)
    server.start()
    yield server
    server.stop()


@pytest.fixture()
async def transport(torchserve: TorchServe) -> AsyncIterator[TorchServeRest]:
    client = TorchServeRest(ServerOptions(url=torchserve.url, model=torchserve.model, timeout_s=60))
    await client.open()
    yield client
    await client.close()


async def test_infer_equals_onnxruntime_here(transport: TorchServeRest, det_model: ReferenceModel) -> None:
    await transport.wait_ready()
    assert await transport.describe() == ServerModel()  # TorchServe has no metadata: nothing to check
    x = np.random.default_rng(0).random((2, 3, 96, 128), dtype=np.float32)
    (expected,) = det_model.run(x)
    result = await transport.infer({det_model.input: x}, [det_model.output])
    assert result[det_model.output].dtype == np.float32
    np.testing.assert_allclose(result[det_model.output], expected, atol=1e-5)
    assert transport.counts.requests >= 1 and transport.counts.sent >= x.nbytes
    assert transport.counts.received >= expected.nbytes


async def test_the_torchserve_engine_runs_the_card(torchserve: TorchServe, det_model: ReferenceModel) -> None:
    card = load_card("pp-ocrv4-det")
    options = HttpOnlyOptions(server=ServerOptions(url=torchserve.url, model=torchserve.model, timeout_s=60))
    settings = RunSettings(max_batch=2)
    engine = load_engine("torchserve", card, options, settings)
    assert isinstance(engine, RemoteEngine)
    await engine.open()
    try:
        check_engine(engine, settings)
        assert "TorchServe" in engine.description
        x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
        (expected,) = det_model.run(x)
        np.testing.assert_allclose(
            (await engine.infer_async({det_model.input: x}))[det_model.output], expected, atol=1e-5
        )
    finally:
        await engine.close()


async def test_an_unknown_model_is_rejected(torchserve: TorchServe) -> None:
    client = TorchServeRest(ServerOptions(url=torchserve.url, model="no_such_model"))
    await client.open()
    try:
        with pytest.raises(Rejected, match=r"no model 'no_such_model'.*Model not found"):
            await client.wait_ready()
    finally:
        await client.close()


async def test_a_wrong_input_is_rejected_with_the_handlers_message(
    transport: TorchServeRest, det_model: ReferenceModel
) -> None:
    x = np.zeros((1, 3, 32, 32), np.float64)
    with pytest.raises(Rejected, match=r"HTTP 400: input 'x' is float32, the request has float64"):
        await transport.infer({det_model.input: x}, [det_model.output])


def test_the_readiness_request_answers_an_empty_npz(torchserve: TorchServe) -> None:
    with urllib.request.urlopen(empty_request(torchserve.url, torchserve.model), timeout=10) as response:
        assert response.read() == write_npz({})
        assert response.headers["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize("content_type", ["application/octet-stream", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_npz_is_a_400(torchserve: TorchServe, content_type: str) -> None:
    request = urllib.request.Request(
        f"{torchserve.url}/predictions/{torchserve.model}", data=b"hello", headers={"Content-Type": content_type}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    assert b'"type": "BadInput"' in caught.value.read()
