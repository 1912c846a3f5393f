"""``infer``: a model run on tensors (or frames it prepares itself), batched across streams."""

from pipeline.engines.warmup import warm_up_feeds

from . import infer as infer
from .arrays import stack_batch
from .infer import LIVE_WAITING, Infer
from .params import BatchParams, InferParams, infer_params_for

__all__ = [
    "LIVE_WAITING",
    "BatchParams",
    "Infer",
    "InferParams",
    "infer",
    "infer_params_for",
    "stack_batch",
    "warm_up_feeds",
]
