"""ByteTrack's association (Zhang et al., 2022) for one stream: every detection, high score or low,
gets a chance to continue a track.

Each frame: every track's Kalman filter predicts its box; detections scoring ``high`` or more are
matched to every track (tracked or lost) by IoU, of the same class only; the tracks still
unmatched are matched to the low-score detections (down to ``low``), which keeps a track through
an occlusion that lowers its score instead of ending it; unmatched high detections scoring
``new_track`` or more start tracks. A track missed for more than ``lost_frames`` frames ends; one
missed on its second frame ends at once (a flicker, not an object). Assignment is optimal per
round (Jonker-Volgenant, ``lap``), costs ``1 - IoU``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import lap
import numpy as np

from pipeline.boxes import iou_matrix

from .kalman import BoxFilter


@dataclass
class Track:
    track_id: int
    label: str
    filter: BoxFilter
    score: float
    first_seen_s: float
    last_seen_s: float
    hits: int = 1
    missed: int = 0
    """Frames since it was last matched."""
    frame_s: float = 0.0
    """The media time between its last two frames: the filter's velocity is per frame."""

    @property
    def box(self) -> np.ndarray:
        return self.filter.box

    @property
    def velocity(self) -> tuple[float, float]:
        """The center's velocity, pixels per second of media time (0 before a second frame)."""
        vx, vy = self.filter.velocity
        return (vx / self.frame_s, vy / self.frame_s) if self.frame_s > 0 else (0.0, 0.0)


@dataclass
class Update:
    """What one frame did: ``tracked[i]`` is the track detection ``i`` belongs to (None: dropped,
    a low score that continued nothing); ``started`` and ``ended`` are tracks that began and ended."""

    tracked: list[Track | None]
    started: list[Track] = field(default_factory=list)
    ended: list[Track] = field(default_factory=list)


def _match(tracks: list[Track], boxes: np.ndarray, labels: list[str], min_iou: float) -> list[tuple[int, int]]:
    """Optimal (track index, detection index) pairs of one class overlapping by ``min_iou`` or more."""
    if not tracks or len(boxes) == 0:
        return []
    cost = 1.0 - iou_matrix(np.array([t.box for t in tracks]), boxes)
    other_class = np.array([[t.label != label for label in labels] for t in tracks])
    cost[other_class] = 1.0
    _, track_to_detection, _ = lap.lapjv(cost, extend_cost=True, cost_limit=1.0 - min_iou)
    return [(t, int(d)) for t, d in enumerate(track_to_detection) if d >= 0]


class ByteTracker:
    def __init__(
        self,
        *,
        high: float = 0.5,
        low: float = 0.1,
        new_track: float = 0.6,
        match_iou: float = 0.2,
        low_match_iou: float = 0.5,
        lost_frames: int = 30,
        ids: Iterator[int] | None = None,
    ) -> None:
        self.high, self.low, self.new_track = high, low, new_track
        self.match_iou, self.low_match_iou = match_iou, low_match_iou
        self.lost_frames = lost_frames
        self.tracks: list[Track] = []
        self._ids = ids if ids is not None else itertools.count(1)
        self._last_s: float | None = None

    def update(self, boxes: np.ndarray, scores: np.ndarray, labels: list[str], at_s: float) -> Update:
        """One frame's detections (``boxes`` ``[n, 4]`` in pixels, at media time ``at_s``)."""
        frame_s = at_s - self._last_s if self._last_s is not None and at_s > self._last_s else 0.0
        self._last_s = at_s
        for track in self.tracks:
            track.filter.predict(still=track.missed > 0)
        tracked: list[Track | None] = [None] * len(scores)
        high = [i for i in range(len(scores)) if scores[i] >= self.high]
        low = [i for i in range(len(scores)) if self.low <= scores[i] < self.high]
        matched: set[int] = set()

        def associate(candidates: list[Track], detections: list[int], min_iou: float) -> None:
            pairs = _match(candidates, boxes[detections], [labels[i] for i in detections], min_iou)
            for t, d in pairs:
                track, index = candidates[t], detections[d]
                track.filter.update(boxes[index])
                track.score, track.last_seen_s, track.hits, track.missed = float(scores[index]), at_s, track.hits + 1, 0
                track.frame_s = frame_s or track.frame_s
                tracked[index] = track
                matched.add(id(track))

        associate(self.tracks, high, self.match_iou)
        # The second round: only tracks seen last frame (not lost ones) may take a low score.
        associate([t for t in self.tracks if id(t) not in matched and t.missed == 0], low, self.low_match_iou)
        update = Update(tracked)
        kept = []
        for track in self.tracks:
            if id(track) not in matched:
                track.missed += 1
                if track.missed > self.lost_frames or track.hits == 1:
                    update.ended.append(track)
                    continue
            kept.append(track)
        for index in high:
            if tracked[index] is None and scores[index] >= self.new_track:
                track = Track(next(self._ids), labels[index], BoxFilter(boxes[index]), float(scores[index]), at_s, at_s)
                kept.append(track)
                tracked[index] = track
                update.started.append(track)
        self.tracks = kept
        return update

    def end_all(self) -> list[Track]:
        """The stream ended: every track ends with it."""
        ended, self.tracks = self.tracks, []
        return ended
