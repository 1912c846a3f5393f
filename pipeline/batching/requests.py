"""What the batcher works with: requests, the policy they are batched by, its clock and errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from ..errors import PipelineError

P = TypeVar("P")


class DeadlineMissed(PipelineError, TimeoutError):
    """A request could not finish within its latency budget: its age plus a model run is over it."""

    def __init__(self, waited_ms: float, budget_ms: float, run_ms: float = 0.0) -> None:
        self.waited_ms = waited_ms
        self.budget_ms = budget_ms
        self.run_ms = run_ms
        super().__init__(f"waited {waited_ms:.1f} ms (+ a {run_ms:.1f} ms run), over the {budget_ms:.1f} ms budget")


class Superseded(PipelineError, RuntimeError):
    """A newer item of the same stream took this request's place while it waited (live streams:
    the freshest frame matters, not every frame)."""


class BatcherClosed(PipelineError, RuntimeError):
    """``submit`` after ``close``."""


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def wait(self, event: asyncio.Event, until: float | None) -> None:
        """Return when ``event`` is set or ``now() >= until`` (``None``: no time limit)."""
        ...


class MonotonicClock:
    def now(self) -> float:
        loop = asyncio.get_running_loop()
        return loop.time()

    async def wait(self, event: asyncio.Event, until: float | None) -> None:
        timeout = None if until is None else max(0.0, until - self.now())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


@dataclass(frozen=True)
class BatchPolicy:
    max_size: int | None = 1
    """Largest batch; ``None`` lets ``AdaptiveSize`` choose up to ``size_limit``."""
    max_delay_ms: float = 0.0
    latency_budget_ms: float | None = None
    """Age (from capture) by which a request's run must be over; one that cannot make it is
    dropped before inference."""
    max_waiting_per_stream: int | None = None
    """Items a stream may have waiting (``None``: no bound; ``limit_waiting`` sets it per stream)."""
    one_per_stream: bool = False
    size_limit: int = 16
    """The largest size ``auto`` may try."""
    max_concurrent: int = 1
    """Batches run at once. More than one for a model on an inference server: the network time of
    one overlaps the server's compute of another. Never with ``one_per_stream`` (a stream's state
    would be read before its previous batch wrote it)."""


@dataclass(eq=False)
class Request(Generic[P]):
    """One item's work: what to run, which stream, and when it was captured and queued."""

    stream_id: str
    payload: P
    group: Hashable = None
    item: Hashable = None
    """Requests with the same ``item`` are one unit for ``max_waiting_per_stream`` (the tensors of
    one frame); ``None``: the request alone."""
    captured_at: float | None = None
    """Clock time the item was captured, where freshness matters (a latency budget, a live
    stream: the freshest streams go first); ``None``: it does not."""
    queued_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    batch_size: int = 0
    model_s: float | None = None
    """Seconds the model itself took for this request's batch, if the run function measured it
    (``auto`` prefers it: the clock around a run also counts waiting for a free thread)."""
    prepare_s: float = 0.0
    """Seconds the run function spent preparing this request's input just before the model ran
    (deferred preparing): part of what a batch of that size costs, for ``auto``."""
    future: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    @property
    def wait_ms(self) -> float:
        return (self.started_at - self.queued_at) * 1000.0

    @property
    def run_ms(self) -> float:
        return (self.finished_at - self.started_at) * 1000.0


RunBatch = Callable[[list[Request[P]]], Awaitable[Sequence[Any]]]
"""Runs one batch; returns one result (or an exception instance) per request, in order."""


def unit(request: Request[Any]) -> Hashable:
    """What ``max_waiting_per_stream`` counts: the item a request is part of, or the request."""
    return request if request.item is None else request.item
