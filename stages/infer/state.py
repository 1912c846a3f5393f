"""A recurrent model's state, kept per stream between runs (the model card's ``state`` list)."""

from __future__ import annotations

import numpy as np

from pipeline.modelcard import ModelCard


class StreamStates:
    """Each stream's recurrent state, per the card's ``state`` list; zeros until first written."""

    def __init__(self, card: ModelCard) -> None:
        specs = {spec.name: spec for spec in card.inputs}
        self._specs = []
        for state in card.state:
            shape = specs[state.input].shape
            axis = shape.index("batch")
            single = tuple(1 if d == "batch" else int(d) for d in shape)
            self._specs.append((state.input, state.output, axis, single, specs[state.input].dtype))
        self._values: dict[str, dict[str, np.ndarray]] = {}

    def reset(self, stream_id: str) -> None:
        self._values.pop(stream_id, None)

    def gather(self, streams: list[str]) -> dict[str, np.ndarray]:
        feeds = {}
        for name, _, axis, single, dtype in self._specs:
            parts = [self._values.get(s, {}).get(name, np.zeros(single, dtype=dtype)) for s in streams]
            feeds[name] = np.concatenate(parts, axis=axis)
        return feeds

    def scatter(self, streams: list[str], outputs: dict[str, np.ndarray]) -> None:
        for name, output, axis, _, _ in self._specs:
            for index, stream_id in enumerate(streams):
                value = np.take(outputs[output], [index], axis=axis)
                self._values.setdefault(stream_id, {})[name] = value
