"""Reduced precision with an accuracy gate: a model runs in bf16 or int8 only once it has been
shown to find what it finds in f32.

``choose_precision`` makes the reduced model (int8: quantized on the card's calibration frames,
``quantize``), runs the held-out frames through it and through the f32 model, and scores the
reduced model's findings with f32's as the truth, by the task's measure (``pipeline.accuracy``:
mAP@0.5 in points). Within ``MAX_LOSS_POINTS`` of f32 it is used; otherwise the stage refuses to
start with the figures, or under ``auto`` the next precision is tried. The int8 file and each
verdict are cached under ``<cache>/precision/``, keyed by the model's hash, the calibration
frames' hash and the runtime versions, so a restart does neither again.
"""

from __future__ import annotations

from .gate import (
    MAX_LOSS_POINTS,
    PrecisionChoice,
    PrecisionTarget,
    Verdict,
    check_precision,
    choose_precision,
)

__all__ = [
    "MAX_LOSS_POINTS",
    "PrecisionChoice",
    "PrecisionTarget",
    "Verdict",
    "check_precision",
    "choose_precision",
]
