"""The frames a reduced precision is made from and checked on: the card's ``calibration`` media,
decoded and prepared as the pipeline prepares frames for the model."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from ..errors import ModelError
from ..imaging import prepare_image
from ..modelcard import ModelCard


@dataclass(frozen=True)
class CalibrationSet:
    quantize: list[np.ndarray]
    """Inputs (a batch of one each) an int8 model is quantized on."""
    held: list[np.ndarray]
    """Other inputs, never used to quantize: reduced precisions are checked against f32 on these."""
    digest: str
    """sha256 of every input, in order: part of the cache keys of what is made from them."""


def calibration_set(card: ModelCard) -> CalibrationSet:
    """The card's calibration frames, prepared at the card's input size: alternately one to
    quantize and one held out. A ``ModelError`` for a card without them or media that is missing."""
    spec, preprocess = card.calibration, card.preprocess
    if spec is None or preprocess is None:
        raise ModelError(
            f"model {card.name!r}: a precision below f32 is checked on frames the card names (its calibration "
            "and preprocess sections); this card has none, so it runs in f32"
        )
    size = (preprocess.size[0], preprocess.size[1])
    paths = [media_path(card, name) for name in spec.media]
    per_file = [spec.frames // len(paths) + (index < spec.frames % len(paths)) for index in range(len(paths))]
    inputs = [
        prepare_image(image, size, preprocess.resize, preprocess).data[np.newaxis]
        for path, count in zip(paths, per_file, strict=True)
        for image in spread_frames(path, count)
    ]
    digest = hashlib.sha256()
    for array in inputs:
        digest.update(np.ascontiguousarray(array).tobytes())
    return CalibrationSet(inputs[0::2], inputs[1::2], digest.hexdigest())


def media_path(card: ModelCard, name: str) -> Path:
    path = Path(name).expanduser()
    path = path if path.is_absolute() else card.card_path.parent / path
    if not path.is_file():
        raise ModelError(
            f"model {card.name!r}: calibration media {name!r} not found (looked at {path}; `make samples` makes "
            "the project's)"
        )
    return path


def spread_frames(path: Path, count: int) -> list[np.ndarray]:
    """``count`` BGR frames of the video at ``path``, spread evenly from its first to its last."""
    if count <= 0:
        return []
    try:
        with av.open(str(path)) as container:
            frames = [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]
    except (av.FFmpegError, ValueError) as exc:  # not a video, or none inside
        raise ModelError(f"calibration media {path}: cannot decode it: {exc}") from None
    if not frames:
        raise ModelError(f"calibration media {path}: no video frames")
    picks = np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int)
    return [frames[i] for i in picks]
