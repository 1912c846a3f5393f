"""``infer``: run a model on the tensor a ``prepare`` stage made, through an engine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.engines import EngineOptions, create_engine
from pipeline.errors import ConfigError
from pipeline.media import Item
from pipeline.modelcard import ModelCard, load_model_card
from pipeline.stage import Stage, StageContext, StageParams, register_stage

from .vision import Geometry, PreparedTensor


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """One item's outputs (batch dimension removed) and the geometry of the tensor it ran on."""

    model: str
    outputs: dict[str, np.ndarray]
    geometry: Geometry | None


class InferParams(StageParams):
    model: str
    """Model card name or path."""
    input: str | None = None
    """The ``prepare`` stage whose tensor feeds the model; defaults to this stage's first input."""
    engine: Literal["auto", "onnxruntime"] = "auto"
    providers: list[str] | None = None
    """ONNX Runtime execution providers, in order; default: the best installed."""
    intra_op_threads: int = Field(default=0, ge=0)
    """Threads per model run; 0 lets ONNX Runtime use every core."""


@register_stage("infer")
class Infer(Stage):
    Params = InferParams
    params: InferParams
    latency_key = "infer"

    def check(self, base_dir: Path) -> None:
        self._load_card(base_dir)

    def _load_card(self, base_dir: Path) -> ModelCard:
        card = load_model_card(self.params.model, base_dir)
        if len(card.inputs) != 1:
            raise ConfigError("params.model", f"model {card.name!r} has {len(card.inputs)} inputs; infer feeds one")
        return card

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        card = self._load_card(ctx.base_dir)
        options = EngineOptions(
            providers=tuple(self.params.providers) if self.params.providers else None,
            intra_op_threads=self.params.intra_op_threads,
        )
        self.card = card
        self.engine = await ctx.run_blocking(create_engine, self.params.engine, card, options)
        self.tensor_key = self.params.input or ctx.input_stages[0]
        ctx.logger.info("model %s on %s", card.name, self.engine.description)

    async def process(self, item: Item) -> Sequence[Item]:
        prepared = item.tensors.pop(self.tensor_key, None)
        if not isinstance(prepared, PreparedTensor):
            raise ValueError(f"no tensor from stage {self.tensor_key!r} on this item (is it a prepare stage?)")
        feeds = {self.card.inputs[0].name: prepared.data[None]}
        outputs = await self.ctx.run_blocking(self.engine.infer, feeds)
        item.tensors[self.name] = ModelOutput(
            model=self.card.name,
            outputs={name: value[0] for name, value in outputs.items()},
            geometry=prepared.geometry,
        )
        return (item,)
