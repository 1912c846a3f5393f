"""Shared fixtures: the generated sample, a real nats-server per test session, model files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.bus import NatsServer

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
