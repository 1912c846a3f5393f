"""What tracked objects do in one stream's scene, frame by frame: appear, leave, enter and leave
zones (polygons), cross lines (segments), and how many of each class are in each zone.

Where an object *is* is one point of its box: its bottom center by default (where it stands on
the ground, as Frigate counts it), or its center. A line is crossed when that point's step from
one frame to the next intersects the segment; the direction is the side it ends on, seen walking
along the line from its first point to its second in image coordinates (y down): ``right`` or
``left``. (A horizontal line drawn left to right is crossed ``right`` going down the image.)

Pure logic: the ``object_events`` stage feeds it each frame's tracked objects and publishes what
it returns.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import cv2
import numpy as np
from pydantic import Field

from pipeline.pictures import SceneGeometry

Anchor = Literal["bottom", "center"]

Point = Annotated[list[float], Field(min_length=2, max_length=2)]
"""``[x, y]`` in source-frame pixels."""
Polygon = Annotated[list[Point], Field(min_length=3)]
Segment = Annotated[list[Point], Field(min_length=2, max_length=2)]


@dataclass
class _Seen:
    label: str
    point: tuple[float, float]
    zones: set[str] = field(default_factory=set)


def anchor_point(box: list[float], anchor: Anchor) -> tuple[float, float]:
    x0, y0, x1, y1 = box
    return ((x0 + x1) / 2, y1 if anchor == "bottom" else (y0 + y1) / 2)


def _side(a: tuple[float, float], b: tuple[float, float], p: tuple[float, float]) -> float:
    """> 0: ``p`` is right of the line a -> b (image coordinates, y down); < 0: left."""
    return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])


def crossing(
    line: tuple[tuple[float, float], tuple[float, float]], before: tuple[float, float], after: tuple[float, float]
) -> Literal["right", "left"] | None:
    """The side a step ``before -> after`` crossed segment ``line`` to, if it did."""
    a, b = line
    side_before, side_after = _side(a, b, before), _side(a, b, after)
    if side_before == 0 or side_after == 0 or (side_before > 0) == (side_after > 0):
        return None
    # The step's own line must separate the segment's ends too: else it passed beside the segment.
    if (_side(before, after, a) > 0) == (_side(before, after, b) > 0):
        return None
    return "right" if side_after > 0 else "left"


class Scene:
    def __init__(
        self,
        zones: dict[str, list[list[float]]],
        lines: dict[str, list[list[float]]],
        anchor: Anchor = "bottom",
        min_frames: int = 1,
    ) -> None:
        self.zones = {name: np.asarray(polygon, np.float32) for name, polygon in zones.items()}
        self.min_frames = min_frames
        self.sightings: Counter[int] = Counter()
        """Frames each track not yet in the scene was seen on: it enters on its ``min_frames``-th."""
        self.lines = {name: ((p[0][0], p[0][1]), (p[1][0], p[1][1])) for name, p in lines.items()}
        self.anchor = anchor
        self.seen: dict[int, _Seen] = {}
        self.crossed: dict[str, Counter[str]] = {name: Counter() for name in lines}

    def geometry(self) -> SceneGeometry:
        """The zones and lines with their counts now, as ``overlay`` draws them."""
        return SceneGeometry(
            zones={name: [(float(x), float(y)) for x, y in polygon] for name, polygon in self.zones.items()},
            zone_counts={name: self.zone_counts(name) for name in self.zones},
            lines=dict(self.lines),
            line_counts={name: dict(counts) for name, counts in self.crossed.items()},
        )

    def zone_counts(self, zone: str) -> dict[str, int]:
        return dict(Counter(s.label for s in self.seen.values() if zone in s.zones))

    def update(self, objects: list[dict[str, Any]], ended: list[int]) -> list[dict[str, Any]]:
        """One frame's tracked objects and the tracks that ended: the events, in order."""
        events: list[dict[str, Any]] = []
        for obj in objects:
            track_id, label = obj["track_id"], obj["label"]
            point = anchor_point(obj["box"], self.anchor)
            seen = self.seen.get(track_id)
            if seen is None:
                self.sightings[track_id] += 1
                if self.sightings[track_id] < self.min_frames:
                    continue  # not in the scene yet: a flicker that ends before this is never news
                del self.sightings[track_id]
                seen = self.seen[track_id] = _Seen(label, point)
                events.append({"event": "object_entered", **_who(obj)})
            for name, line in self.lines.items():
                direction = crossing(line, seen.point, point)
                if direction is not None:
                    self.crossed[name][direction] += 1
                    events.append(
                        {"event": "line_crossed", "line": name, "direction": direction, **_who(obj),
                         "counts": dict(self.crossed[name])}
                    )  # fmt: skip
            inside = {name for name, polygon in self.zones.items() if is_inside(polygon, point)}
            entered, left = inside - seen.zones, seen.zones - inside
            seen.point, seen.zones = point, inside
            for name in sorted(entered):
                events.append({"event": "zone_entered", "zone": name, **_who(obj), "counts": self.zone_counts(name)})
            for name in sorted(left):
                events.append({"event": "zone_left", "zone": name, **_who(obj), "counts": self.zone_counts(name)})
        for track_id in ended:
            self.sightings.pop(track_id, None)
            events.extend(self._gone(track_id))
        return events

    def end(self) -> list[dict[str, Any]]:
        """The stream ended: every object still in the scene leaves it."""
        self.sightings.clear()
        return [event for track_id in list(self.seen) for event in self._gone(track_id)]

    def _gone(self, track_id: int) -> list[dict[str, Any]]:
        seen = self.seen.pop(track_id, None)
        if seen is None:
            return []
        who = {"track_id": track_id, "label": seen.label}
        events = [
            {"event": "zone_left", "zone": name, **who, "counts": self.zone_counts(name)} for name in sorted(seen.zones)
        ]
        return [*events, {"event": "object_left", **who}]


def is_inside(polygon: np.ndarray, point: tuple[float, float]) -> bool:
    """Whether ``point`` is in ``polygon`` (``float32`` ``[n, 2]``) or on its edge."""
    return cv2.pointPolygonTest(polygon, (float(point[0]), float(point[1])), False) >= 0


def _who(obj: dict[str, Any]) -> dict[str, Any]:
    return {"track_id": obj["track_id"], "label": obj["label"], "score": obj["score"], "box": obj["box"]}
