"""What a run is fed besides frames: zeros at the size the model will run (the warm-up), and the card's constants."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..modelcard import ModelCard


def warm_up_feeds(card: ModelCard, xp: Any = np, *, batch: int = 1) -> dict[str, Any] | None:
    """Zeros for a batch (of one by default) at the card's input size, or None where that size is not known
    (an axis other than batch, height and width) or the model keeps state between runs. ``xp``
    makes them: CuPy for a model on a GPU, so the warm-up takes the path real device frames take
    and counts no host copy."""
    if card.state or card.preprocess is None:
        return None
    spec = card.data_inputs[0]
    height, width = card.preprocess.size
    named = {"batch": batch, "height": height, "width": width}
    if not all(isinstance(dim, int) or dim in named for dim in spec.shape):
        return None
    shape = [dim if isinstance(dim, int) else named[dim] for dim in spec.shape]
    return {spec.name: xp.zeros(shape, dtype=spec.dtype)}


def constant_feeds(card: ModelCard, xp: Any = np) -> dict[str, Any]:
    """The card's ``constants`` as arrays of their inputs' dtypes, made by ``xp`` (CuPy: on the
    device once, not with every batch)."""
    return {
        spec.name: xp.asarray(card.constants[spec.name], dtype=spec.dtype)
        for spec in card.inputs
        if spec.name in card.constants
    }
