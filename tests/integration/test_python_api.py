"""The Python API (pipeline/api.py, ``from streamgraph import Pipeline``) with real models and a
real nats-server: the example in docs/python-api.md as written, results with their frames, a
stream added from code, and a pipeline on a thread of its own."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.errors import ConfigError
from samples.photos import object_samples
from streamgraph import Pipeline, run_in_thread

from .support import ROOT

FRAMES = 40


def doc_example() -> str:
    text = (ROOT / "docs" / "python-api.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, re.S)[0]


async def test_the_documented_example_runs_as_written(nats_server: Any, cli_env: dict[str, str]) -> None:
    object_samples()  # the video it reads
    env = {**cli_env, "STREAMGRAPH_NATS_URL": nats_server.url}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", doc_example(), cwd=str(ROOT), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=240)
    assert process.returncode == 0, stderr.decode()[-3000:]
    assert stdout.decode().strip() == "['dog', 'horse', 'person']"


def objects_config(video: Path) -> dict[str, Any]:
    """configs/objects.yaml as a dict, as a program would build it."""
    return {
        "pipeline": "api",
        "stages": [
            {"name": "video", "type": "file", "params": {"path": str(video), "id": "person"}},
            {"name": "decode", "type": "decode", "inputs": ["video"]},
            {"name": "detect", "type": "infer", "inputs": ["decode"], "params": {"model": "yolov4-tiny"}},
            {"name": "objects", "type": "yolo", "inputs": ["detect"], "params": {"model": "yolov4-tiny"}},
            {"name": "tracks", "type": "track", "inputs": ["objects"]},
            {"name": "publish", "type": "publish", "inputs": ["tracks"]},
        ],
    }


async def test_callback_with_frames_and_a_stream_added_from_code(nats_server: Any) -> None:
    videos = object_samples()
    got: list[tuple[str, int, tuple[int, ...]]] = []

    async def on_result(message: dict[str, Any], frame: np.ndarray | None) -> None:
        assert frame is not None and frame.dtype == np.uint8
        size = message["frame"]
        assert frame.shape == (size["height"], size["width"], 3)
        got.append((message["stream_id"], message["seq"], frame.shape))

    pipeline = Pipeline(
        objects_config(videos["person"]),
        sources=[str(videos["person"])],
        nats_url=nats_server.url,
        on_result=on_result,
        frames=True,
    )
    await pipeline.start()
    await pipeline.add_stream("second", str(videos["dog"]))
    await pipeline.add_stream("third", str(videos["dog"]), rate="native")
    assert {s["id"] for s in pipeline.streams()} >= {"second", "third"}
    await pipeline.remove_stream("third")  # stopped from code: it ends, the others go on
    summary = await pipeline.wait()
    for stream in ("person", "second"):
        assert [seq for sid, seq, _ in got if sid == stream] == list(range(FRAMES))
    assert summary.stats.stream("third").ended
    assert pipeline.dropped == 0


async def test_results_iterate_until_the_run_ends(nats_server: Any) -> None:
    video = object_samples()["person"]
    async with Pipeline(objects_config(video), nats_url=nats_server.url) as pipeline:
        results = [result async for result in pipeline.results()]
    assert all(result.frame is None for result in results)  # not asked for
    seqs = [result.message["seq"] for result in results]
    assert seqs == list(range(FRAMES))


def test_a_pipeline_on_its_own_thread(nats_server: Any) -> None:
    got: list[int] = []
    running = run_in_thread(
        Pipeline(
            objects_config(object_samples()["person"]),
            nats_url=nats_server.url,
            on_result=lambda m, f: got.append(m["seq"]),
        )
    )
    summary = running.join(timeout_s=240)
    assert summary is not None and summary.stats.published == FRAMES
    assert got == list(range(FRAMES))


async def test_a_bad_config_raises_a_config_error_naming_the_key() -> None:
    config = objects_config(object_samples()["person"])
    config["stages"][2]["params"]["modle"] = "yolov4-tiny"
    with pytest.raises(ConfigError, match=r"stages\[2\]\.params\.modle: unknown key \(did you mean 'model'\?\)"):
        Pipeline(config)  # built and checked here, before anything starts
    config = objects_config(Path("no-such.mp4"))
    with pytest.raises(ConfigError, match=r"stages\[0\]\.params\.path: no such file"):
        Pipeline(config)
