"""``infer``'s params: the keys every engine shares, and the engine's own checked against its model."""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from pipeline.engines import EngineOptions, UnknownEngine, engine_entry
from pipeline.stage import StageParams


class BatchParams(StageParams):
    max_size: int | Literal["auto"] = Field(default=1)
    """Most requests per model run; ``auto`` measures and picks (up to ``size_limit``)."""
    max_delay_ms: float = Field(default=0.0, ge=0)
    """How long the oldest request may wait for the batch to fill."""
    latency_budget_ms: float | None = Field(default=None, gt=0)
    """Items that cannot be through the model this long after capture are dropped before
    inference, and counted; with a budget each stream keeps only its newest item waiting."""
    size_limit: int = Field(default=16, ge=1, le=256)


class InferParams(StageParams):
    """The keys every engine shares. The chosen engine's own keys (``providers``, ``fp16``,
    ``tf32``, ``intra_op_threads``, ``server``, ...) sit beside them and are checked against its
    strict options model: in YAML before anything starts (``Infer.params_model``), and by
    ``engine_options`` for params built in code."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    model: str
    """Model card name or path."""
    input: str | None = None
    """The stage whose tensor feeds the model; defaults to this stage's first input."""
    size: list[int] | None = Field(default=None, min_length=2, max_length=2)
    """Fed frames (no preparing stage in front): [height, width] of the tensor it prepares; the
    card's size by default."""
    resize: Literal["stretch", "letterbox"] | None = None
    """Fed frames: ``stretch`` or ``letterbox``; the card's choice by default."""
    engine: str = "auto"
    """A registered engine (``pipeline.engines.engine_names()``). ``auto``: TensorRT, else ONNX
    Runtime with CUDA, else ONNX Runtime on the CPU (logged)."""
    batch: BatchParams = BatchParams()

    @model_validator(mode="after")
    def _engine_takes_its_keys(self) -> InferParams:
        """Params built in code are checked as YAML is: the engine exists and takes these keys."""
        try:
            self.engine_options()
        except UnknownEngine as exc:
            raise ValueError(str(exc)) from None
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise ValueError(f"{where}: {error['msg']} (engine {self.engine!r})") from None
        return self

    def engine_options(self) -> EngineOptions:
        """The engine's keys of these params, validated by its options model."""
        options = engine_entry(self.engine).options
        mine = set(InferParams.model_fields)
        return options.model_validate({k: v for k, v in self.model_dump().items() if k not in mine})


@functools.cache
def infer_params_for(engine: str) -> type[InferParams]:
    """``InferParams`` with ``engine``'s options as fields, strict: what YAML is validated by, so an
    unknown or misspelt key is named with the keys this engine takes."""
    options = engine_entry(engine).options
    config = ConfigDict(extra="forbid", strict=True, frozen=True)
    return type(f"InferParams_{engine}", (InferParams, options), {"model_config": config, "__module__": __name__})
