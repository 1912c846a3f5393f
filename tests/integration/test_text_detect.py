"""configs/text-detect.yaml end to end: real nats-server, real model, real subscriber."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from .support import ROOT, Recorder, finish, iou, run_to_end, start_cli

CONFIG = str(ROOT / "configs" / "text-detect.yaml")


async def test_publishes_one_valid_message_per_frame_with_real_detections(
    nats_server: Any, sample_video: Path, ground_truth: dict[str, Any], cli_env: dict[str, str]
) -> None:
    recording = await run_to_end(nats_server.url, CONFIG, "text-detect", env=cli_env)
    assert recording.returncode == 0, recording.stderr
    frames = ground_truth["frames"]
    assert f"{frames} frames decoded, {frames} messages published, 0 dropped" in recording.stdout

    results = recording.results["sample"]
    # Exactly one message per decoded frame, in order, no gaps; every one schema-valid (Recorder checks).
    assert [r["seq"] for r in results] == list(range(frames))
    # Nats-Msg-Id: <pipeline>.<stream>.<run>.<seq>, the run the token every message of this run carries.
    run = results[0]["run"]
    assert {r["run"] for r in results} == {run}
    assert recording.msg_ids[:3] == [f"text-detect.sample.{run}.{seq}" for seq in range(3)]
    assert recording.event_names("sample") == ["started", "ended"]
    ended = recording.events["sample"][-1]
    assert ended["reason"] == "eof"
    assert ended["frames"] == {"decoded": frames, "published": frames, "dropped": 0}

    # Detection is real: most ground-truth lines are matched by a published box with IoU >= 0.5.
    matched = total = 0
    for message in results:
        boxes = [b["box"] for b in message["results"]["text"]["boxes"]]
        for line in ground_truth["lines"]:
            truth = line["boxes"][message["seq"]]
            total += 1
            matched += any(iou(truth, box) >= 0.5 for box in boxes)
    assert total == frames * len(ground_truth["lines"])
    assert matched / total >= 0.9, f"only {matched}/{total} ground-truth lines detected"

    latency = results[-1]["latency_ms"]
    assert latency["infer"] > 0 and latency["decode"] > 0 and latency["total"] >= latency["infer"]


async def test_sigint_during_native_playback_drains_and_accounts_for_every_frame(
    nats_server: Any, sample_video: Path, cli_env: dict[str, str]
) -> None:
    env = {**cli_env, "STREAMGRAPH_RATE": "native"}
    async with Recorder(nats_server.url, "text-detect") as recorder:
        process = await start_cli("run", CONFIG, "--nats-url", nats_server.url, "--no-progress", env=env)
        while len(recorder.recording.results.get("sample", [])) < 25:
            assert process.returncode is None, "the pipeline exited before it was interrupted"
            await asyncio.sleep(0.05)
        process.send_signal(2)  # SIGINT, as Ctrl-C sends
        await finish(process, recorder.recording, timeout_s=30)
        await asyncio.wait_for(recorder.ended("sample").wait(), timeout=30)
    recording = recorder.recording
    assert recording.returncode == 0, recording.stderr
    assert "Traceback" not in recording.stderr
    summary = re.search(
        r"stopped: 1 stream\(s\), (\d+) frames decoded, (\d+) messages published, (\d+) dropped", recording.stdout
    )
    assert summary, recording.stdout
    decoded, published, dropped = map(int, summary.groups())
    assert decoded < 250, "native pacing should have been interrupted well before the end"
    assert decoded == published + dropped
    assert len(recording.results["sample"]) == published
    ended = recording.events["sample"][-1]
    assert ended["event"] == "ended" and ended["reason"] == "stopped"
    assert ended["frames"]["decoded"] == decoded


def _config_with(tmp_path: Path, files: dict[str, Path]) -> Path:
    lines = ["pipeline: broken-input", "stages:"]
    for stream_id, path in files.items():
        lines.append(f"  - {{name: src-{stream_id}, type: file, params: {{path: '{path}', id: {stream_id}}}}}")
    sources = ", ".join(f"src-{s}" for s in files)
    lines += [
        f"  - {{name: decode, type: decode, inputs: [{sources}]}}",
        "  - {name: publish, type: publish, inputs: [decode]}",
    ]
    config = tmp_path / "broken.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


@pytest.fixture()
def broken_files(tmp_path: Path, sample_video: Path) -> dict[str, Path]:
    data = sample_video.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: cut off
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(bytes(range(256)) * 40)
    return {"good": sample_video, "truncated": truncated, "garbage": garbage}


async def test_bad_files_end_their_own_stream_with_an_error_and_the_good_one_finishes(
    nats_server: Any,
    tmp_path: Path,
    broken_files: dict[str, Path],
    ground_truth: dict[str, Any],
    cli_env: dict[str, str],
) -> None:
    config = _config_with(tmp_path, broken_files)
    async with Recorder(nats_server.url, "broken-input") as recorder:
        process = await start_cli("run", str(config), "--nats-url", nats_server.url, "--no-progress", env=cli_env)
        await finish(process, recorder.recording)
        for stream_id in broken_files:
            await asyncio.wait_for(recorder.ended(stream_id).wait(), timeout=30)
    recording = recorder.recording
    assert recording.returncode == 1
    assert "Traceback" not in recording.stderr
    for stream_id in ("truncated", "garbage"):
        # Neither opens (the truncated MP4 lost its index): never started, each fails alone.
        assert recording.event_names(stream_id) == ["error", "ended"]
        error = recording.events[stream_id][-2]["message"]
        assert str(broken_files[stream_id]) in error
        assert f"stream {stream_id} failed: " in recording.stderr
        assert recording.events[stream_id][-1]["reason"] == "error"
    assert [r["seq"] for r in recording.results["good"]] == list(range(ground_truth["frames"]))


async def test_a_missing_file_is_a_config_error_for_validate_and_run(
    nats_server: Any, tmp_path: Path, broken_files: dict[str, Path], cli_env: dict[str, str]
) -> None:
    # Known before running: exit 2 naming the YAML path and the file, and nothing is published.
    # (A file that goes away after this check fails its stream at run time: tests/unit/stages/test_sources.py.)
    config = _config_with(tmp_path, {**broken_files, "missing": tmp_path / "missing.mp4"})
    expected = f"stages[3].params.path: no such file: {tmp_path / 'missing.mp4'}"
    validate = await start_cli("validate", str(config), env=cli_env)
    _, stderr = await asyncio.wait_for(validate.communicate(), timeout=60)
    assert validate.returncode == 2
    assert expected in stderr.decode()
    async with Recorder(nats_server.url, "broken-input") as recorder:
        process = await start_cli("run", str(config), "--nats-url", nats_server.url, "--no-progress", env=cli_env)
        await finish(process, recorder.recording)
    recording = recorder.recording
    assert recording.returncode == 2
    assert expected in recording.stderr and "Traceback" not in recording.stderr
    assert recording.results == {} and recording.events == {}
