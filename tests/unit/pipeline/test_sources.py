"""pipeline.sources: ``run --source`` replaces a config's one source with a streams source."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import parse_config
from pipeline.errors import ConfigError
from pipeline.sources import stream_ids, with_sources


def config(*sources: str) -> dict:
    stages = [
        {"name": name, "type": "file", "params": {"path": "x.mp4", "tracks": ["video", "audio"]}} for name in sources
    ]
    stages.append({"name": "decode", "type": "decode", "inputs": list(sources)})
    return {"pipeline": "p", "stages": stages}


def test_the_source_stage_is_replaced_under_its_name_by_one_stream_per_source(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    parsed = parse_config(config("video"), base_dir=Path("/elsewhere"))
    replaced = with_sources(parsed, ["clip.mp4", "rtsp://cam/live/front", "https://host/a/b.m3u8?t=1"])
    video = replaced.stages[0]
    assert (video.name, video.type) == ("video", "streams")
    assert video.params["stay_open"] is False  # the run ends with its streams
    assert video.params["streams"] == [
        # a relative path is the shell's (the current directory), not the config's
        {"id": "clip", "uri": str(tmp_path / "clip.mp4"), "options": {"tracks": ["video", "audio"]}},
        {"id": "front", "uri": "rtsp://cam/live/front", "options": {"tracks": ["video", "audio"]}},
        {"id": "b", "uri": "https://host/a/b.m3u8?t=1", "options": {"tracks": ["video", "audio"]}},
    ]
    assert replaced.stages[1:] == parsed.stages[1:]  # decode still reads "video"


def test_ids_stay_distinct() -> None:
    assert stream_ids(["a/cam.mp4", "b/cam.mp4", "cam.mkv", "rtsp://h/x y"]) == ["cam", "cam-2", "cam-3", "x_y"]


def test_a_pipeline_with_two_sources_is_refused_with_their_names() -> None:
    with pytest.raises(ConfigError, match="this one has 2: a, b"):
        with_sources(parse_config(config("a", "b"), base_dir=Path(".")), ["x.mp4"])


def test_a_camera_device_opens_as_v4l2_and_is_paced_live() -> None:
    parsed = parse_config(config("video"), base_dir=Path("."))
    (stream,) = with_sources(parsed, ["/dev/video0"]).stages[0].params["streams"]
    assert stream == {
        "id": "video0",
        "uri": "/dev/video0",
        "options": {"tracks": ["video", "audio"], "format": "v4l2", "rate": "native"},
    }
