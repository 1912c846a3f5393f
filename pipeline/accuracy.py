"""How close a reduced-precision model stays to its f32 self, by the task's own measure.

A model run in bf16 or int8 answers a little differently; whether that matters is a question
about what the pipeline makes of the answers, not about the raw numbers (a logit 0.2 off may move
no box at all, or drop one). So each task says how its model's outputs become what it reports:
the families register a reader (``register_boxes``: one image's outputs -> the boxes the stage
would report), and the gate scores the reduced model's boxes with f32's as the truth:
mean average precision at IoU 0.5 over the classes f32 found, in points (f32 against itself: 100).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .boxes import iou_matrix
from .errors import ModelError
from .modelcard import ModelCard


@dataclass(frozen=True)
class Boxes:
    """One image's findings: ``boxes`` ``[n, 4]`` (x0, y0, x1, y1, any unit), ``scores`` ``[n]``,
    ``classes`` ``[n]`` (one class for a task that has none)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


BoxReader = Callable[[ModelCard, Mapping[str, np.ndarray]], Boxes]

_READERS: dict[str, BoxReader] = {}

MATCH_IOU = 0.5


def register_boxes(task: str) -> Callable[[BoxReader], BoxReader]:
    """Decorator: ``reader(card, outputs)`` reads the boxes of one image's outputs of a ``task`` model."""

    def decorate(reader: BoxReader) -> BoxReader:
        _READERS[task] = reader
        return reader

    return decorate


def metric_name(task: str) -> str:
    return "mAP@0.5" if task in _READERS else "none"


def box_reader(card: ModelCard) -> BoxReader:
    reader = _READERS.get(card.task)
    if reader is None:
        known = ", ".join(sorted(_READERS)) or "none (import stages to register them)"
        raise ModelError(
            f"model {card.name!r}: no accuracy measure for task {card.task!r} (tasks with one: {known}); "
            "it runs in f32 only"
        )
    return reader


def agreement(
    card: ModelCard, reference: Sequence[Mapping[str, np.ndarray]], candidate: Sequence[Mapping[str, np.ndarray]]
) -> float:
    """The candidate's mAP@0.5 in points over these images, ``reference``'s findings taken as the
    truth (outputs of one image each, the same images in the same order)."""
    read = box_reader(card)
    truth = [read(card, outputs) for outputs in reference]
    found = [read(card, outputs) for outputs in candidate]
    return mean_average_precision(truth, found)


def mean_average_precision(truth: list[Boxes], found: list[Boxes]) -> float:
    """mAP at IoU 0.5 in points: per class of the truth, the area under the precision/recall curve
    of ``found`` ranked by score (every point interpolated, as COCO and VOC 2010+ do); the mean
    over classes. Nothing in the truth and nothing found is full agreement (100)."""
    classes = sorted({int(c) for image in truth for c in image.classes})
    if not classes:
        return 100.0 if all(image.scores.size == 0 for image in found) else 0.0
    return 100.0 * float(np.mean([_average_precision(truth, found, c) for c in classes]))


def _average_precision(truth: list[Boxes], found: list[Boxes], cls: int) -> float:
    ranked: list[tuple[float, bool]] = []
    positives = 0
    for want, got in zip(truth, found, strict=True):
        targets = want.boxes[want.classes == cls]
        positives += len(targets)
        mine = got.classes == cls
        boxes, scores = got.boxes[mine], got.scores[mine]
        taken = np.zeros(len(targets), bool)
        for index in np.argsort(-scores, kind="stable"):
            overlaps = iou_matrix(boxes[index][None], targets)[0]
            overlaps[taken] = 0.0
            best = int(np.argmax(overlaps)) if overlaps.size else -1
            hit = best >= 0 and overlaps[best] >= MATCH_IOU
            if hit:
                taken[best] = True
            ranked.append((float(scores[index]), hit))
    ranked.sort(key=lambda entry: -entry[0])
    hits = np.cumsum([hit for _, hit in ranked])
    precision = hits / np.arange(1, len(ranked) + 1) if ranked else np.zeros(0)
    recall = hits / positives if ranked else np.zeros(0)
    # Precision made monotone from the right, summed over the recall steps.
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if ranked else np.zeros(0)
    steps = np.diff(np.concatenate([[0.0], recall]))
    return float(np.sum(steps * envelope))
