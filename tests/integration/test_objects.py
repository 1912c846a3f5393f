"""configs/objects.yaml end to end (``streamgraph run --source``, real YOLOv4-tiny, a real
nats-server): on videos made from real photos (samples/photos.py), the objects everyone knows the
photos for, each with one track id for the whole clip; two dogs crossing keep their ids. And
``--source`` runs another shipped pipeline on another video."""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from samples.photos import object_samples

from .support import RESULT_VALIDATOR, ROOT, run_to_end

CONFIG = str(ROOT / "configs" / "objects.yaml")


@pytest.fixture(scope="module")
def videos() -> dict[str, Path]:
    return object_samples()


def tracks_by_label(results: list[dict[str, Any]]) -> dict[str, set[int]]:
    found: dict[str, set[int]] = defaultdict(set)
    for result in results:
        for obj in result["results"]["objects"]["objects"]:
            found[obj["label"]].add(obj["track_id"])
    return dict(found)


@pytest.mark.parametrize(
    ("video", "expected"), [("dog", {"dog", "bicycle", "truck"}), ("person", {"person", "dog", "horse"})]
)
async def test_each_photo_object_is_found_and_keeps_one_track(
    nats_server: Any, cli_env: dict[str, str], videos: dict[str, Path], video: str, expected: set[str]
) -> None:
    recording = await run_to_end(
        nats_server.url, CONFIG, "objects", (video,), env=cli_env, args=("--source", str(videos[video]))
    )
    assert recording.returncode == 0, recording.stderr[-2000:]
    results = recording.results[video]
    assert len(results) == 40  # every frame of the 4 s clip
    for result in results:
        RESULT_VALIDATOR.validate(result)
        for obj in result["results"]["objects"]["objects"]:
            assert set(obj) >= {"label", "score", "box", "track_id"} and 0 < obj["score"] <= 1
            x0, y0, x1, y1 = obj["box"]
            assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480  # source-frame pixels
    tracks = tracks_by_label(results)
    assert expected <= set(tracks), tracks
    assert {label: len(tracks[label]) for label in expected} == dict.fromkeys(expected, 1), tracks
    # Each of them in every frame, under that one id.
    for label in expected:
        seen = sum(any(o["label"] == label for o in r["results"]["objects"]["objects"]) for r in results)
        assert seen == len(results), (label, seen)


async def test_two_dogs_crossing_keep_their_ids(
    nats_server: Any, cli_env: dict[str, str], videos: dict[str, Path]
) -> None:
    recording = await run_to_end(
        nats_server.url, CONFIG, "objects", ("crossing",), env=cli_env, args=("--source", str(videos["crossing"]))
    )
    assert recording.returncode == 0, recording.stderr[-2000:]
    paths: dict[int, list[float]] = defaultdict(list)  # track id -> its box's center x, frame by frame
    for result in recording.results["crossing"]:
        for obj in result["results"]["objects"]["objects"]:
            assert obj["label"] == "dog"
            paths[obj["track_id"]].append((obj["box"][0] + obj["box"][2]) / 2)
    assert len(paths) == 2, {k: len(v) for k, v in paths.items()}
    directions = sorted(path[-1] - path[0] > 0 for path in paths.values())
    assert directions == [False, True]  # one went right, the other left...
    for path in paths.values():
        # ...and kept going that way: a swap where they meet would turn a track back. (Frame to
        # frame a box jitters, so the path is sampled at every tenth of the clip.)
        samples = [path[round(i * (len(path) - 1) / 10)] for i in range(11)]
        steps = [b - a for a, b in itertools.pairwise(samples)]
        assert all(step > 0 for step in steps) or all(step < 0 for step in steps), samples


async def test_source_runs_another_shipped_pipeline_on_another_video(
    nats_server: Any, cli_env: dict[str, str], videos: dict[str, Path]
) -> None:
    config = str(ROOT / "configs" / "text-detect.yaml")
    recording = await run_to_end(
        nats_server.url, config, "text-detect", ("dog",), env=cli_env, args=("--source", str(videos["dog"]))
    )
    assert recording.returncode == 0, recording.stderr[-2000:]
    assert len(recording.results["dog"]) == 40 and "sample" not in recording.results
