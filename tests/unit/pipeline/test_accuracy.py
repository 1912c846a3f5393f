"""pipeline.accuracy: the accuracy gate's measure (mAP@0.5 against f32's findings) on boxes made by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.accuracy import Boxes, box_reader, mean_average_precision
from pipeline.errors import ModelError
from pipeline.modelcard import load_card


def boxes(*found: tuple[float, float, float, float, float, int]) -> Boxes:
    array = np.array(found, np.float64).reshape(-1, 6)
    return Boxes(array[:, :4], array[:, 4], array[:, 5].astype(np.int64))


TRUTH = [
    boxes((0, 0, 10, 10, 0.9, 0), (20, 20, 40, 40, 0.8, 1)),
    boxes((5, 5, 15, 15, 0.7, 0)),
]


def test_the_same_findings_score_100() -> None:
    assert mean_average_precision(TRUTH, TRUTH) == pytest.approx(100.0)


def test_a_box_moved_within_iou_half_still_counts_and_one_moved_past_it_does_not() -> None:
    nudged = [boxes((1, 1, 11, 11, 0.9, 0), (20, 20, 40, 40, 0.8, 1)), TRUTH[1]]
    assert mean_average_precision(TRUTH, nudged) == pytest.approx(100.0)
    moved = [boxes((8, 8, 18, 18, 0.9, 0), (20, 20, 40, 40, 0.8, 1)), TRUTH[1]]  # IoU 4/196
    # class 0: the moved box (0.9) is a false positive ranked above the hit (0.7): recall 0.5 at
    # precision 0.5, AP 0.25; class 1: AP 1
    assert mean_average_precision(TRUTH, moved) == pytest.approx(100.0 * (0.25 + 1.0) / 2)


def test_a_missed_class_scores_zero_for_that_class_and_a_wrong_label_is_a_miss() -> None:
    relabelled = [boxes((0, 0, 10, 10, 0.9, 0), (20, 20, 40, 40, 0.8, 2)), TRUTH[1]]
    assert mean_average_precision(TRUTH, relabelled) == pytest.approx(50.0)


def test_an_extra_box_ranked_above_the_true_ones_costs_precision() -> None:
    extra = [boxes((0, 0, 10, 10, 0.9, 0), (50, 50, 60, 60, 0.95, 0), (20, 20, 40, 40, 0.8, 1)), TRUTH[1]]
    score = mean_average_precision(TRUTH, extra)
    assert 50.0 < score < 100.0


def test_nothing_to_find_and_nothing_found_is_agreement() -> None:
    empty = [boxes(), boxes()]
    assert mean_average_precision(empty, empty) == 100.0
    assert mean_average_precision(empty, [boxes((0, 0, 1, 1, 0.5, 0)), boxes()]) == 0.0


def test_a_task_without_a_measure_is_named() -> None:
    import stages  # noqa: F401  (the families register their readers)

    with pytest.raises(ModelError, match=r"no accuracy measure for task 'voice_activity'"):
        box_reader(load_card("silero-vad"))
    assert box_reader(load_card("yolov4-tiny")).__name__ == "detected_boxes"
