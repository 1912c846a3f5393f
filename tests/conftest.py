"""Shared fixtures: the generated sample, a real nats-server per test session, model files, and a
StageContext for driving one stage by hand (unit and GPU tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pipeline.bus import NatsServer, free_port
from pipeline.stage import Stage, StageContext
from pipeline.stats import StreamStats

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


@pytest.fixture(scope="session")
def sample_video() -> Path:
    """samples/text.mp4 (made by samples/make_samples.py on first use)."""
    video = SAMPLES / "text.mp4"
    if not (video.is_file() and (SAMPLES / "text.json").is_file()):
        subprocess.run([sys.executable, str(SAMPLES / "make_samples.py")], check=True)
    return video


@pytest.fixture(scope="session")
def ground_truth(sample_video: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((sample_video.parent / "text.json").read_text())
    return data


@pytest.fixture(scope="session")
def av_sample() -> Path:
    """samples/av.mp4: text.mp4's video plus the committed speech as AAC (made on first use)."""
    video = SAMPLES / "av.mp4"
    if not (video.is_file() and (SAMPLES / "av.json").is_file()):
        subprocess.run([sys.executable, str(SAMPLES / "make_samples.py")], check=True)
    return video


@pytest.fixture(scope="session")
def speech_truth() -> list[dict[str, Any]]:
    """The utterances in samples/speech.flac (and av.mp4): text, start_s, end_s."""
    utterances: list[dict[str, Any]] = json.loads((SAMPLES / "speech.json").read_text())["utterances"]
    return utterances


@pytest.fixture(scope="session")
def nats_server() -> Any:
    """A real nats-server with JetStream, on a free loopback port, for the whole session."""
    with NatsServer(jetstream=True) as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _pulled_models() -> None:
    """Fetch model files once, up front, so no test pays for (or races on) the download."""
    subprocess.run([sys.executable, "-m", "pipeline.cli", "--log-level", "WARNING", "models", "pull"], check=True)


@pytest.fixture()
def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- one stage driven by hand: a thread pool and a ready StageContext factory ----------------------


@pytest.fixture()
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(2, thread_name_prefix="unit")
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture()
def make_ctx(executor: ThreadPoolExecutor, tmp_path: Path) -> Callable[..., StageContext]:
    """``make_ctx(stage_name, input_stages=(...))``: a StageContext with fresh stats."""

    def make(
        stage: str = "stage",
        *,
        input_stages: tuple[str, ...] = (),
        stats: StreamStats | None = None,
        consumers: tuple[Stage, ...] = (),
    ):
        return StageContext(
            pipeline="unit",
            stage=stage,
            base_dir=tmp_path,
            stats=stats if stats is not None else StreamStats(),
            executor=executor,
            input_stages=input_stages,
            consumers=consumers,
        )

    return make


# --- a real RTSP server (gst-rtsp-server, run by the system Python) ---------------------------------

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = ROOT / "tests" / "rtsp_server.py"
_GST_PROBE = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
    "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
    "needed = ('videotestsrc', 'clockoverlay', 'x264enc', 'rtph264pay');"
    "missing = [e for e in needed if not Gst.ElementFactory.find(e)];"
    "assert not missing, f'missing GStreamer elements: {missing}'"
)
_APT = (
    "apt-get install -y python3-gi gir1.2-gst-rtsp-server-1.0 "
    "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly"
)


class RtspServer:
    """tests/rtsp_server.py as a child process: start, pause (SIGSTOP: a camera that hangs),
    kill, and start again on the same port."""

    def __init__(self, port: int, mount: str = "/cam", fps: int = 25) -> None:
        self.port = port
        self.mount = mount
        self.fps = fps
        self.url = f"rtsp://127.0.0.1:{port}{mount}"
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 30) -> None:
        assert self.process is None, "already running"
        process = subprocess.Popen(
            [SYSTEM_PYTHON, str(RTSP_SERVER), "--port", str(self.port), "--mount", self.mount, "--fps", str(self.fps)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.process = process
        ready = threading.Event()

        def wait_for_ready() -> None:
            if process.stdout is not None and process.stdout.readline().strip() == "ready":
                ready.set()

        threading.Thread(target=wait_for_ready, daemon=True).start()
        if not ready.wait(timeout_s):
            self.kill()
            raise RuntimeError(f"the RTSP server did not start on port {self.port}")

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        if self.process is None:
            return
        self.process.kill()  # SIGKILL also ends a stopped process
        self.process.wait(timeout=10)
        self.process = None


@pytest.fixture(scope="session")
def gst_rtsp_available() -> None:
    """Skip (with the fix) where the system Python has no gst-rtsp-server."""
    if not Path(SYSTEM_PYTHON).is_file():
        pytest.skip(f"no {SYSTEM_PYTHON}: the RTSP test server runs on the system Python")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", _GST_PROBE], capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"{SYSTEM_PYTHON} cannot run gst-rtsp-server ({last}); install it: {_APT}")


@pytest.fixture()
def camera_30fps(gst_rtsp_available: None) -> Any:
    """Like ``rtsp_server``, at 30 frames per second."""
    server = RtspServer(free_port(), fps=30)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture()
def rtsp_server(gst_rtsp_available: None) -> Any:
    """A real RTSP server (live H.264) on a free loopback port, started; stopped after the test."""
    server = RtspServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


# --- GPU tests: run where an NVIDIA GPU is usable, skipped with the reason elsewhere ---------------


def _gpu_unusable() -> str | None:
    import importlib.util

    if importlib.util.find_spec("cuda") is None:
        return "no NVIDIA GPU stack here (cuda-python not installed: pip install -e '.[gpu]')"
    from pipeline.engines import cuda_device_unusable

    return cuda_device_unusable()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    reason = _gpu_unusable()
    if reason is not None:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=f"needs an NVIDIA GPU: {reason}"))
