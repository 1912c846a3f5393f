"""``overlay`` + ``mp4`` end to end (real YOLOv4-tiny, real nats-server, the real CLI): the
MP4 segments play (PyAV), hold every frame, and show the boxes drawn where the results say the
objects are; a run stopped part-way leaves whole files too."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import yaml

from samples.photos import object_samples

from .support import ROOT, Recorder, finish, run_to_end, start_cli

FRAMES = 40  # the person video: 4 s at 10 frames/s


def config_with_recording(folder: Path, rate: str = "max") -> str:
    config = yaml.safe_load((ROOT / "configs" / "objects.yaml").read_text())
    config["pipeline"] = "rec"
    stages = config["stages"]
    for stage in stages:
        if stage["type"] == "file":
            stage["params"].update(path=str(object_samples()["person"]), id="person", rate=rate)
    publish = stages.pop()
    stages += [
        {"name": "overlay", "type": "overlay", "inputs": ["events"]},
        {"name": "record", "type": "mp4", "inputs": ["overlay"],
         "params": {"path": str(folder / "recordings"), "segment_s": 2.0}},
        {**publish, "inputs": ["record"]},
    ]  # fmt: skip
    path = folder / "rec.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def original_frames() -> list[np.ndarray]:
    return decoded(object_samples()["person"])


@pytest.mark.timeout(300)
async def test_the_recording_plays_has_every_frame_and_shows_the_boxes(
    nats_server: Any, cli_env: dict[str, str], tmp_path: Path
) -> None:
    recording = await run_to_end(nats_server.url, config_with_recording(tmp_path), "rec", ("person",), env=cli_env)
    assert recording.returncode == 0, recording.stderr[-3000:]
    folder = tmp_path / "recordings" / "person"
    segments = sorted(folder.glob("*.mp4"))
    assert not list(folder.glob("*.part"))
    assert len(segments) == 2, segments  # 4 s in segments of 2 s
    frames = [frame for segment in segments for frame in decoded(segment)]
    assert len(frames) == FRAMES
    raw = original_frames()
    assert frames[0].shape == raw[0].shape
    # Where the results put the person, the recording shows a box edge the raw video does not have;
    # well inside the box, the two are the same picture (H.264 twice over: within its noise).
    for message in recording.results["person"][::10]:
        seq = message["seq"]
        person = next(o for o in message["results"]["objects"]["objects"] if o["label"] == "person")
        x0, y0, _, y1 = (round(v) for v in person["box"])
        drawn, plain = frames[seq].astype(np.int16), raw[seq].astype(np.int16)
        # The left edge, below the label tag.
        edge = np.abs(drawn[y0 + 30 : y1 - 10, x0] - plain[y0 + 30 : y1 - 10, x0]).mean()
        inside = np.abs(drawn[(y0 + y1) // 2, x0 + 20 : x0 + 40] - plain[(y0 + y1) // 2, x0 + 20 : x0 + 40]).mean()
        assert edge > 40 > inside * 4, (seq, edge, inside)


@pytest.mark.timeout(300)
async def test_a_run_stopped_part_way_leaves_a_file_that_plays(
    nats_server: Any, cli_env: dict[str, str], tmp_path: Path
) -> None:
    config = config_with_recording(tmp_path, rate="native")
    async with Recorder(nats_server.url, "rec") as recorder:
        process = await start_cli("run", config, "--nats-url", nats_server.url, "--no-progress", env=cli_env)
        async with asyncio.timeout(120):
            while len(recorder.recording.results.get("person", [])) < 5:
                await asyncio.sleep(0.05)
        process.send_signal(signal.SIGINT)
        await finish(process, recorder.recording)
    assert recorder.recording.returncode == 0, recorder.recording.stderr[-3000:]
    folder = tmp_path / "recordings" / "person"
    assert not list(folder.glob("*.part"))
    frames = [frame for segment in sorted(folder.glob("*.mp4")) for frame in decoded(segment)]
    assert 5 <= len(frames) < FRAMES
