"""stages.objects.scene: appear, leave, zones and lines, from tracked objects we move ourselves."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.errors import ConfigError
from pipeline.stage import build_stage
from stages.objects.detection import YoloDetection
from stages.objects.object_events import ObjectEvents
from stages.objects.scene import Scene, crossing


def dog(track_id: int, x: float, y: float, score: float = 0.9) -> dict[str, Any]:
    """A 20x20 box whose bottom center is (x, y)."""
    return {"track_id": track_id, "label": "dog", "score": score, "box": [x - 10, y - 20, x + 10, y]}


def test_a_step_across_a_segment_is_a_crossing_to_the_side_it_ends_on() -> None:
    line = ((0.0, 100.0), (200.0, 100.0))  # drawn left to right
    assert crossing(line, (50, 90), (50, 110)) == "right"  # going down the image
    assert crossing(line, (50, 110), (50, 90)) == "left"
    assert crossing(line, (250, 90), (250, 110)) is None  # beside the segment, not across it
    assert crossing(line, (50, 90), (60, 95)) is None  # not across
    assert crossing(line, (50, 100), (50, 110)) is None  # starting on the line is not crossing it


def test_an_object_enters_crosses_a_line_enters_a_zone_and_leaves() -> None:
    scene = Scene(zones={"yard": [[100, 0], [200, 0], [200, 200], [100, 200]]}, lines={"gate": [[150, 0], [150, 200]]})
    assert [e["event"] for e in scene.update([dog(1, 50, 100)], [])] == ["object_entered"]
    assert scene.update([dog(1, 80, 100)], []) == []
    (entered,) = scene.update([dog(1, 120, 100)], [])
    assert entered | {"box": None} == {
        "event": "zone_entered", "zone": "yard", "track_id": 1, "label": "dog", "score": 0.9, "box": None,
        "counts": {"dog": 1},
    }  # fmt: skip
    (crossed,) = scene.update([dog(1, 160, 100)], [])
    # The gate is drawn downwards: walking it, the right-hand side is the image's left.
    assert (crossed["event"], crossed["line"], crossed["direction"], crossed["counts"]) == (
        "line_crossed", "gate", "left", {"left": 1},
    )  # fmt: skip
    assert scene.update([dog(2, 190, 100)], []) == [
        {"event": "object_entered", "track_id": 2, "label": "dog", "score": 0.9, "box": [180, 80, 200, 100]},
        {"event": "zone_entered", "zone": "yard", "track_id": 2, "label": "dog", "score": 0.9,
         "box": [180, 80, 200, 100], "counts": {"dog": 2}},
    ]  # fmt: skip
    left = scene.update([dog(2, 190, 100)], [1])  # track 1 ended (the tracker lost it)
    assert [(e["event"], e["track_id"], e.get("counts")) for e in left] == [
        ("zone_left", 1, {"dog": 1}),
        ("object_left", 1, None),
    ]
    assert [(e["event"], e["track_id"]) for e in scene.end()] == [("zone_left", 2), ("object_left", 2)]
    assert scene.seen == {}


def test_a_flicker_shorter_than_min_frames_makes_no_events() -> None:
    scene = Scene(zones={}, lines={}, min_frames=3)
    assert scene.update([dog(1, 50, 100)], []) == []
    assert scene.update([dog(1, 52, 100)], []) == []
    assert scene.update([], [1]) == []  # it ended before its third frame: never in the scene
    scene.update([dog(2, 50, 100)], [])
    scene.update([dog(2, 50, 100)], [])
    assert [e["event"] for e in scene.update([dog(2, 50, 100)], [])] == ["object_entered"]
    assert [e["event"] for e in scene.update([], [2])] == ["object_left"]
    assert scene.sightings == {}


@pytest.mark.parametrize(
    ("cls", "params", "path"),
    [
        (ObjectEvents, {"zones": {"yard": [[0, 0], [10, 0]]}}, "params.zones.yard"),  # two points: no polygon
        (ObjectEvents, {"lines": {"gate": [[0, 0], [10, 0], [10, 10]]}}, "params.lines.gate"),  # a line has two
        (ObjectEvents, {"zones": {"yard": [[0, 0], [10], [10, 10]]}}, "params.zones.yard[1]"),  # a point is [x, y]
        (YoloDetection, {"model": "yolov4-tiny", "roi": [[[0, 0], [10, 0]]]}, "params.roi[0]"),
    ],
)
def test_zones_lines_and_regions_that_are_not_shapes_are_config_errors_naming_them(
    cls: type, params: dict[str, Any], path: str
) -> None:
    with pytest.raises(ConfigError) as info:
        build_stage(cls, "stage", params)
    assert info.value.path == path, info.value
