"""Fixtures for the remote-engine tests: a real Triton and a real KServe ModelServer per test session,
both serving PP-OCRv4 det as ``pp_ocrv4_det`` (and YOLOv4-tiny as ``yolov4_tiny``), and that model run
here for reference; ``torchserve`` (session scope, tests/remote/torchserve.py) serves the same two.

``triton_server`` / ``kserve_server`` (session scope) give a ``ServerProcess`` (tests/remote/servers.py):
``.http_url`` (``http://127.0.0.1:<port>``), ``.grpc_url`` (``grpc://127.0.0.1:<port>``), ``.model``,
``.kill()`` (SIGKILL, waits for exit), ``.start()`` / ``.restart()`` (same ports, waits until ready),
``.log_path``. Without the venvs (``make servers``) the tests skip, or fail where ``CI=true``.
A test that leaves a server killed gets it started again after it, so the next test finds it up.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.modelcard import load_card
from pipeline.modelstore import model_path
from tests.remote.servers import (
    KSERVE_SCRIPT,
    KSERVE_VENV,
    TRITON_ACCESS_TOKEN,
    TRITON_SCRIPT,
    TRITON_VENV,
    ReferenceModel,
    ServerError,
    ServerProcess,
    free_port,
    venv_python,
)
from tests.remote.torchserve import TORCHSERVE_VENV, TorchServe

DET_CARD = "pp-ocrv4-det"
DET_NAME = "pp_ocrv4_det"
YOLO_NAME = "yolov4_tiny"
"""Triton and KServe serve the object detector too (tests/remote/test_objects_remote.py)."""

# The session's servers that were started, for _servers_left_running.
_STARTED: list[ServerProcess] = []


@pytest.fixture(scope="session")
def det_model(_pulled_models: None) -> ReferenceModel:
    """PP-OCRv4 det: the pulled ONNX file, its tensor names (from the card) and ``.run`` in-process."""
    card = load_card(DET_CARD)
    return ReferenceModel(
        name=DET_NAME,
        path=model_path(card, pull=False),
        inputs=[spec.name for spec in card.inputs],
        outputs=[spec.name for spec in card.outputs],
    )


def _serve(server: ServerProcess) -> Iterator[ServerProcess]:
    try:
        server.start()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)
    _STARTED.append(server)
    try:
        yield server
    finally:
        _STARTED.remove(server)
        server.stop()


@pytest.fixture(scope="session")
def triton_server(det_model: ReferenceModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real Triton (PyTriton) serving pp_ocrv4_det on ONNX Runtime, on free ports."""
    python = venv_python(TRITON_VENV, "the Triton server")
    tmp = tmp_path_factory.mktemp("triton")
    server = ServerProcess(
        kind="Triton",
        python=python,
        script=TRITON_SCRIPT,
        models={det_model.name: det_model.path, YOLO_NAME: model_path(load_card("yolov4-tiny"), pull=False)},
        ports={"--http-port": free_port(), "--grpc-port": free_port(), "--metrics-port": free_port()},
        log_path=tmp / "triton.log",
        # PyTriton's workspace (a copy of tritonserver, sockets): in the test's tmp, not ~/.cache,
        # so the ones a SIGKILL leaves behind go with it.
        env={"PYTRITON_HOME": str(tmp / "pytriton")},
        options=("--access-token", TRITON_ACCESS_TOKEN),
    )
    yield from _serve(server)


@pytest.fixture(scope="session")
def kserve_server(det_model: ReferenceModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real KServe ModelServer serving pp_ocrv4_det (v2 REST and gRPC, TF Serving's v1 REST format)."""
    python = venv_python(KSERVE_VENV, "the KServe server")
    tmp = tmp_path_factory.mktemp("kserve")
    server = ServerProcess(
        kind="KServe",
        python=python,
        script=KSERVE_SCRIPT,
        models={det_model.name: det_model.path, YOLO_NAME: model_path(load_card("yolov4-tiny"), pull=False)},
        ports={"--http-port": free_port(), "--grpc-port": free_port()},
        log_path=tmp / "kserve.log",
    )
    yield from _serve(server)


@pytest.fixture(scope="session")
def torchserve(det_model: ReferenceModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServe]:
    """TorchServe serving pp_ocrv4_det and yolov4_tiny with the tensor handler."""
    venv_python(TORCHSERVE_VENV, "TorchServe")
    server = TorchServe(
        TORCHSERVE_VENV,
        {det_model.name: det_model.path, YOLO_NAME: model_path(load_card("yolov4-tiny"), pull=False)},
        tmp_path_factory.mktemp("torchserve"),
    )
    server.archive()
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _servers_left_running() -> Iterator[None]:
    """After each test, start again a session server the test killed (and did not bring back)."""
    yield
    for server in list(_STARTED):
        if not server.running:
            server.restart()
