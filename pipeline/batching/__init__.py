"""The stream-aware batcher: many streams' requests share one model run.

Requests wait in one queue per stream. A batch goes out when it is full or when the oldest
waiting request has waited ``max_delay_ms`` (never later than the next moment the model is free),
taking requests round-robin across streams so a flooding stream cannot starve a slow one (live or
budgeted streams: the freshest of the streams whose turn it is, ``StreamOrder``). Only
requests of one *group* (e.g. one tensor shape) share a batch; the group of the oldest request
goes first. With ``latency_budget_ms`` a request that cannot finish within its budget (its age
since capture plus the 90th percentile of recent runs of that batch size; only its age while one
run alone takes longer than the budget) is failed with ``DeadlineMissed`` before it costs a model run. With
``max_waiting_per_stream`` (live streams) a stream keeps at most that many items waiting: a newer
item supersedes the oldest waiting one (``Superseded``), so what waits in front of the model is
bounded in time, not only in count. ``one_per_stream`` keeps a stream's requests in separate
batches, in order, as a recurrent model's state demands.

Exactly one outcome per request: its result or its own exception. If a whole batch raises, its
requests are retried one by one, so one bad input fails only itself.

With ``max_size: auto`` an ``AdaptiveSize`` measures the cost of the batch sizes it runs and
settles on the size with the most throughput whose run still fits the latency budget, probing a
neighbouring size now and then as load changes.

Time comes from an injectable ``Clock``; tests drive it by hand instead of sleeping.
"""

from __future__ import annotations

from .batcher import Batcher
from .order import StreamOrder
from .requests import BatcherClosed, BatchPolicy, Clock, DeadlineMissed, MonotonicClock, Request, RunBatch, Superseded
from .sizing import AdaptiveSize, estimate_run

__all__ = [
    "AdaptiveSize",
    "BatchPolicy",
    "Batcher",
    "BatcherClosed",
    "Clock",
    "DeadlineMissed",
    "MonotonicClock",
    "Request",
    "RunBatch",
    "StreamOrder",
    "Superseded",
    "estimate_run",
]
