"""configs/av-ensemble.yaml end to end: video text detection and audio VAD of one file, joined.

Real nats-server, real models, real subscriber; every message is checked against the schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .support import ROOT, Recording, run_to_end

CONFIG = str(ROOT / "configs" / "av-ensemble.yaml")


async def run_ensemble(nats_server: Any, cli_env: dict[str, str], **env: str) -> Recording:
    return await run_to_end(nats_server.url, CONFIG, "av-ensemble", env={**cli_env, **env})


@pytest.fixture(scope="module")
def av_truth(av_sample: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(av_sample.with_suffix(".json").read_text())
    return data


async def test_each_frame_carries_both_branches(
    nats_server: Any, av_truth: dict[str, Any], cli_env: dict[str, str]
) -> None:
    recording = await run_ensemble(nats_server, cli_env)
    assert recording.returncode == 0, recording.stderr
    frames = av_truth["frames"]
    results = recording.results["sample"]
    # One message per video frame, in order: the audio windows are folded into them, not sent.
    assert [r["seq"] for r in results] == list(range(frames))
    assert all(r["results"]["text"]["type"] == "text_detection" for r in results)
    joined = [r["results"]["speech"] for r in results]
    assert all(j["type"] == "join" and j["branch"] == "speech" for j in joined)
    assert [j["status"] for j in joined] == ["ok"] * frames

    # Every window lands on the frame whose time span holds it.
    for message, join in zip(results, joined, strict=True):
        start = message["media_time_s"]
        for window in join["items"]:
            assert start <= window["media_time_s"] < start + 0.04 + 1e-6
    windows = [w for j in joined for w in j["items"]]
    assert len({w["seq"] for w in windows}) == len(windows) >= 0.95 * 10.0 * 16000 / 512

    # The audio branch really ran: inside each utterance speech is seen, and the four
    # segments it closed ride on the frames where they closed.
    def probabilities_between(start_s: float, end_s: float) -> list[float]:
        return [w["results"]["speech"]["probability"] for w in windows if start_s <= w["media_time_s"] < end_s]

    for utterance in av_truth["speech"]:
        assert max(probabilities_between(utterance["start_s"], utterance["end_s"])) > 0.5
    segments = [s for w in windows for s in w["results"]["speech"].get("segments", [])]
    assert len(segments) == len(av_truth["speech"])

    ended = recording.events["sample"][-1]
    assert ended["reason"] == "eof"
    counts = ended["frames"]
    assert counts["decoded"] == counts["published"] + counts["dropped"] + counts.get("consumed", 0)


async def test_a_file_without_the_audio_it_asks_for_ends_with_an_error_naming_the_track(
    nats_server: Any, sample_video: Path, cli_env: dict[str, str]
) -> None:
    """The config asks for ``tracks: [video, audio]``: a video-only file is refused with an error
    event naming the missing track (and, a stream of the config file, exit code 1), not played in part."""
    recording = await run_ensemble(nats_server, cli_env, STREAMGRAPH_AV_FILE=str(sample_video))
    assert recording.returncode == 1, recording.stderr
    assert "sample" not in recording.results
    events = recording.events["sample"]
    assert [e["event"] for e in events] == ["error", "ended"]  # refused on opening: never started
    assert str(sample_video) in events[0]["message"]
    assert "has no audio stream (tracks: [video, audio])" in events[0]["message"]
