"""configs/vad.yaml end to end: the sample's audio track through the real Silero VAD model (the
``infer`` stage carrying each stream's recurrent state), real nats-server, real subscriber."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .support import ROOT, Recorder, Recording, finish, start_cli

CONFIG = ROOT / "configs" / "vad.yaml"
STREAM = "speech"
WINDOWS = 313  # 10.005 s of decoded AAC at 16 kHz, in 512-sample windows (the last one partial)
TOLERANCE_S = 0.150
COPIES = 8


async def run_config(config: Path, nats_url: str, env: dict[str, str], streams: list[str]) -> Recording:
    async with Recorder(nats_url, "vad") as recorder:
        process = await start_cli("run", str(config), "--nats-url", nats_url, "--no-progress", env=env)
        await finish(process, recorder.recording)
        if recorder.recording.returncode in (0, 1):  # it ran (2: a config error, nothing started)
            for stream_id in streams:
                await asyncio.wait_for(recorder.ended(stream_id).wait(), timeout=30)
    return recorder.recording


def segments(recording: Recording, stream_id: str) -> list[tuple[float, float]]:
    found = []
    for message in recording.results.get(stream_id, []):
        result = message["results"]["speech"]
        assert result["type"] == "speech_segments"
        found += [(s["start_s"], s["end_s"]) for s in result["segments"]]
    return found


def check_against_truth(found: list[tuple[float, float]], truth: list[dict[str, Any]]) -> None:
    """Each utterance: exactly one segment, both edges within TOLERANCE_S; no segment elsewhere."""
    for utterance in truth:
        overlapping = [s for s in found if s[0] < utterance["end_s"] and s[1] > utterance["start_s"]]
        assert len(overlapping) == 1, f"{utterance['text']!r}: {overlapping}"
        start, end = overlapping[0]
        assert abs(start - utterance["start_s"]) <= TOLERANCE_S, (utterance, start)
        assert abs(end - utterance["end_s"]) <= TOLERANCE_S, (utterance, end)
    assert len(found) == len(truth), f"segments in the silences: {found}"


@pytest.fixture(scope="module")
def single_run(nats_server: Any, av_sample: Path) -> Recording:
    """configs/vad.yaml as shipped, once for the module."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return asyncio.run(run_config(CONFIG, nats_server.url, env, [STREAM]))


def test_one_message_per_utterance_with_its_segment(single_run: Recording, speech_truth: list[dict[str, Any]]):
    recording = single_run
    assert recording.returncode == 0, recording.stderr
    assert "Traceback" not in recording.stderr
    utterances = len(speech_truth)
    consumed = WINDOWS - utterances
    assert (
        f"{WINDOWS} frames decoded, {utterances} messages published, 0 dropped, {consumed} consumed" in recording.stdout
    )
    assert recording.event_names(STREAM) == ["started", "ended"]
    ended = recording.events[STREAM][-1]
    assert ended["reason"] == "eof"
    assert ended["frames"] == {"decoded": WINDOWS, "published": utterances, "dropped": 0, "consumed": consumed}

    messages = recording.results[STREAM]
    assert len(messages) == utterances  # schema-valid, each one (the Recorder checks)
    found = segments(recording, STREAM)
    check_against_truth(found, speech_truth)
    seqs = [m["seq"] for m in messages]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for message, (_, end) in zip(messages, found, strict=True):
        # Published on the window where the segment closed: after its end, in media time, and
        # in the audio's own time base (samples at 16 kHz).
        assert message["time_base"] == "1/16000"
        assert message["media_time_s"] >= end - 0.03 - 0.001  # the end includes 30 ms of padding
        assert "frame" not in message
        assert message["latency_ms"]["infer"] > 0
    run = messages[0]["run"]
    assert recording.msg_ids == [f"vad.{STREAM}.{run}.{seq}" for seq in seqs]


def _copies_config(tmp_path: Path, copies: int) -> Path:
    config = yaml.safe_load(CONFIG.read_text())
    source = config["stages"][0]
    assert source["type"] == "file"
    source["params"]["path"] = str((CONFIG.parent / source["params"]["path"]).resolve())
    sources = []
    for index in range(copies):
        copy = {**source, "name": f"audio{index}", "params": {**source["params"], "id": f"{STREAM}{index}"}}
        sources.append(copy)
    decode, infer = config["stages"][1], config["stages"][2]
    decode["inputs"] = [s["name"] for s in sources]
    assert infer["type"] == "infer"
    # Windows of all streams share model runs: each batch gathers its streams' states.
    infer["params"]["batch"] = {"max_size": copies, "max_delay_ms": 20}
    config["stages"] = [*sources, *config["stages"][1:]]
    path = tmp_path / "vad-copies.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def test_eight_concurrent_streams_each_get_the_single_stream_segments(
    single_run: Recording, nats_server: Any, tmp_path: Path, cli_env: dict[str, str], speech_truth: list[dict]
):
    # Eight copies of the stream through one audio_decode and one (batching) infer: each stream's
    # recurrent state must stay its own, so each gets exactly what the stream got alone.
    streams = [f"{STREAM}{i}" for i in range(COPIES)]
    recording = await run_config(_copies_config(tmp_path, COPIES), nats_server.url, cli_env, streams)
    assert recording.returncode == 0, recording.stderr
    assert "Traceback" not in recording.stderr
    assert re.search(rf"{COPIES} stream\(s\), {COPIES * WINDOWS} frames decoded", recording.stdout), recording.stdout
    alone = segments(single_run, STREAM)
    for stream_id in streams:
        assert segments(recording, stream_id) == alone, stream_id
        ended = recording.events[stream_id][-1]
        assert ended["reason"] == "eof"
        frames = ended["frames"]
        assert frames["decoded"] == WINDOWS
        assert frames["decoded"] == frames["published"] + frames["dropped"] + frames.get("consumed", 0)
    check_against_truth(alone, speech_truth)
