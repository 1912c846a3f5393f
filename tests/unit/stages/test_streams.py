"""The ``streams`` source: config checks, URI schemes, limits, and ending with its last stream."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import parse_config
from pipeline.control import (
    StreamControlError,
    StreamExists,
    StreamHostUnavailable,
    StreamLimitReached,
    StreamSpec,
)
from pipeline.control import reply_status as status_of
from pipeline.errors import ConfigError
from pipeline.runner import Runner
from pipeline.service import build
from pipeline.stage import source_class_for_uri
from stages.ingest.file import FileSource
from stages.ingest.rtsp import RtspSource


def _config(params: dict[str, Any], base_dir: Path) -> Any:
    return parse_config(
        {
            "pipeline": "streams-test",
            "stages": [
                {"name": "src", "type": "streams", "params": params},
                {"name": "decode", "type": "decode", "inputs": ["src"]},
                {"name": "sink", "class": "tests.fakes:CountingSink", "inputs": ["decode"]},
            ],
        },
        base_dir=base_dir,
    )


@pytest.mark.parametrize(
    ("uri", "cls"),
    [
        ("clip.mp4", FileSource),
        ("/abs/clip.mp4", FileSource),
        ("file:///abs/clip.mp4", FileSource),
        ("C:/clips/a.mp4", FileSource),
        ("rtsp://cam/1", RtspSource),
        ("RTSPS://cam/1", RtspSource),
    ],
)
def test_a_uri_picks_its_source_type(uri: str, cls: type) -> None:
    build(_config({}, Path(".")))  # registers the built-in stages
    assert source_class_for_uri(uri) is cls


def test_an_unknown_scheme_names_the_known_ones() -> None:
    build(_config({}, Path(".")))
    with pytest.raises(ConfigError, match=r"no source takes 'gopher' URIs; known schemes: .*rtsp"):
        source_class_for_uri("gopher://x")


@pytest.mark.parametrize(
    ("streams", "path"),
    [
        ([{"id": "a", "uri": "x.mp4", "options": {"rate": "slow"}}], "stages[0].params.streams[0].options.rate"),
        ([{"id": "a", "uri": "x.mp4"}, {"id": "b", "uri": "ftp://h/x"}], "stages[0].params.streams[1].uri"),
        ([{"id": "a", "uri": "x.mp4"}, {"id": "a", "uri": "y.mp4"}], "stages[0].params.streams"),
        ([{"id": "a/b", "uri": "x.mp4"}], "stages[0].params.streams[0].id"),
    ],
)
def test_bad_streams_in_the_yaml_fail_before_anything_starts(streams: list[Any], path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(_config({"streams": streams}, Path(".")))
    assert caught.value.path == path


async def test_without_stay_open_the_source_ends_with_its_last_stream(sample_video: Path) -> None:
    streams = [{"id": f"s{i}", "uri": sample_video.name} for i in range(2)]
    runner = Runner(
        build(_config({"streams": streams, "stay_open": False}, sample_video.parent)), base_dir=sample_video.parent
    )
    summary = await asyncio.wait_for(runner.run(), 120)  # ends by itself: no stop asked
    assert not summary.interrupted
    for stream_id in ("s0", "s1"):
        counters = summary.stats.stream(stream_id)
        assert counters.decoded == counters.published == 250


async def test_max_streams_and_a_stopping_pipeline_refuse_new_streams(sample_video: Path) -> None:
    params = {"streams": [{"id": "only", "uri": sample_video.name, "options": {"rate": "native"}}], "max_streams": 1}
    runner = Runner(build(_config(params, sample_video.parent)), base_dir=sample_video.parent)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(runner.started.wait(), 30)
    control = runner.control
    while not control.list():
        await asyncio.sleep(0.01)
    with pytest.raises(StreamControlError) as full:
        await control.add(StreamSpec(id="more", uri=sample_video.name))
    assert isinstance(full.value, StreamLimitReached) and "max_streams=1" in full.value.message
    assert status_of(full.value) == 409
    runner.request_stop()
    with pytest.raises(StreamControlError) as stopping:
        await control.add(StreamSpec(id="late", uri=sample_video.name))
    assert isinstance(stopping.value, StreamHostUnavailable) and status_of(stopping.value) == 503
    summary = await asyncio.wait_for(task, 30)
    assert summary.stats.stream("only").ended is False  # no publisher here; the sink counted instead
    assert summary.stats.stream("only").decoded == summary.stats.stream("only").published


async def test_an_id_a_yaml_source_already_runs_is_refused(sample_video: Path) -> None:
    config = parse_config(
        {
            "pipeline": "streams-test",
            "stages": [
                {
                    "name": "fixed",
                    "type": "file",
                    "params": {"path": sample_video.name, "id": "clip", "rate": "native"},
                },
                {"name": "src", "type": "streams"},
                {"name": "decode", "type": "decode", "inputs": ["fixed", "src"]},
                {"name": "sink", "class": "tests.fakes:CountingSink", "inputs": ["decode"]},
            ],
        },
        base_dir=sample_video.parent,
    )
    runner = Runner(build(config), base_dir=sample_video.parent)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(runner.started.wait(), 30)
    while runner.stats.stream("clip").decoded == 0:
        await asyncio.sleep(0.01)
    with pytest.raises(StreamControlError) as duplicate:
        await runner.control.add(StreamSpec(id="clip", uri=sample_video.name))
    assert isinstance(duplicate.value, StreamExists) and status_of(duplicate.value) == 409
    runner.request_stop()
    await asyncio.wait_for(task, 30)
