"""stages.objects.bytetrack: ids that last, on boxes we move ourselves."""

from __future__ import annotations

import numpy as np

from pipeline.boxes import iou_matrix
from stages.objects.bytetrack import ByteTracker

FPS = 10


def frame(tracker: ByteTracker, index: int, *found: tuple[float, float, float, str]) -> list[int | None]:
    """One frame of ``(x, y, score, label)`` 60x60 boxes; the track id each got."""
    boxes = np.array([[x, y, x + 60, y + 60] for x, y, _, _ in found], np.float64).reshape(-1, 4)
    scores = np.array([s for _, _, s, _ in found])
    update = tracker.update(boxes, scores, [label for *_, label in found], index / FPS)
    return [t.track_id if t is not None else None for t in update.tracked]


def test_two_objects_of_one_class_crossing_keep_their_ids_through_an_occlusion() -> None:
    tracker = ByteTracker()
    first = frame(tracker, 0, (0, 100, 0.9, "dog"), (400, 120, 0.9, "dog"))
    a, b = first
    assert a is not None and b is not None and a != b
    for index in range(1, 41):
        xa, xb = 10 * index, 400 - 10 * index  # a goes right, b goes left; they meet at frame 20
        if 18 <= index <= 22:  # b hides behind a: the detector sees one dog, or b at a low score
            ids = frame(tracker, index, (xa, 100, 0.9, "dog"), *([(xb, 120, 0.3, "dog")] if index % 2 else []))
            assert ids[0] == a
            continue
        assert frame(tracker, index, (xa, 100, 0.9, "dog"), (xb, 120, 0.9, "dog")) == [a, b], index
    assert {t.track_id for t in tracker.tracks} == {a, b}
    moving = {t.track_id: t.velocity[0] for t in tracker.tracks}
    assert moving[a] > 50 and moving[b] < -50  # pixels per second: 10 px a frame at 10 frames/s


def test_a_low_score_continues_a_track_but_never_starts_one() -> None:
    tracker = ByteTracker()
    (dog,) = frame(tracker, 0, (0, 0, 0.9, "dog"))
    assert frame(tracker, 1, (5, 0, 0.2, "dog")) == [dog]  # its score dropped: still the same dog
    assert frame(tracker, 2, (5, 0, 0.9, "dog"), (300, 300, 0.3, "cat")) == [dog, None]


def test_a_class_never_continues_another_class_track() -> None:
    tracker = ByteTracker()
    (dog,) = frame(tracker, 0, (0, 0, 0.9, "dog"))
    (cat,) = frame(tracker, 1, (0, 0, 0.9, "cat"))
    assert cat is not None and cat != dog


def test_a_one_frame_flicker_ends_at_once_and_a_lost_track_after_lost_frames() -> None:
    tracker = ByteTracker(lost_frames=3)
    frame(tracker, 0, (0, 0, 0.9, "dog"), (300, 0, 0.9, "cat"))
    frame(tracker, 1, (0, 0, 0.9, "dog"))  # the cat was there once: a flicker, gone at once
    assert [t.label for t in tracker.tracks] == ["dog"]
    for index in range(2, 5):
        frame(tracker, index)
        assert [t.label for t in tracker.tracks] == ["dog"]  # lost, kept for 3 frames
    update = tracker.update(np.zeros((0, 4)), np.zeros(0), [], 0.5)
    assert [t.label for t in update.ended] == ["dog"] and tracker.tracks == []


def test_iou_matrix() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 5, 10]], np.float64)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float64)
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 1 / 3], [0.5, 0.0]])
