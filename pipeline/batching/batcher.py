"""The batcher's mechanics: queues, the loop that forms batches when due, deadlines, dispatch.

What goes into a batch is policy kept apart: which streams (``order.StreamOrder``) and how many
(``sizing.AdaptiveSize`` for ``max_size: auto``); what a request is, in ``requests``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Any, Generic

from ..errors import EngineError
from .order import StreamOrder
from .requests import (
    BatcherClosed,
    BatchPolicy,
    Clock,
    DeadlineMissed,
    MonotonicClock,
    P,
    Request,
    RunBatch,
    Superseded,
    unit,
)
from .sizing import RECENT_RUN_TIMES, AdaptiveSize, estimate_run, percentile


class Batcher(Generic[P]):
    """Collects requests from many streams into batches for ``run``; see the module docstring."""

    def __init__(
        self,
        run: RunBatch[P],
        policy: BatchPolicy,
        *,
        clock: Clock | None = None,
        release: Callable[[int], None] | None = None,
    ) -> None:
        """``release(size)``: with ``max_size: auto``, called once the size goes back down to
        ``size`` after bigger batches ran, so the model can give back their working memory."""
        if policy.max_size is not None and policy.max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {policy.max_size}")
        if policy.max_concurrent < 1 or (policy.one_per_stream and policy.max_concurrent > 1):
            raise ValueError(f"max_concurrent must be >= 1, and 1 with one_per_stream; got {policy.max_concurrent}")
        self._run = run
        self._release = release
        self.policy = policy
        self.clock: Clock = clock or MonotonicClock()
        self.adaptive = None if policy.max_size else AdaptiveSize(policy.size_limit, budget_ms=policy.latency_budget_ms)
        self._queues: OrderedDict[str, deque[Request[P]]] = OrderedDict()
        self._pending = 0
        self._changed = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        """Batches running beside the loop (``max_concurrent`` > 1)."""
        self._waiting_limits: dict[str, int | None] = {}
        self._order: StreamOrder[P] = StreamOrder(one_per_stream=policy.one_per_stream)
        self._run_times: dict[int, deque[float]] = {}
        """The last ``RECENT_RUN_TIMES`` run times by batch size (the clock around a run, waiting
        for a thread included), for the deadline check."""
        self.batches = 0
        self.batched_items = 0
        self.model_s_total = 0.0
        self.deadline_drops = 0
        self.superseded = 0
        """Items (not requests) superseded by a newer item of their stream."""

    @property
    def mean_model_ms(self) -> float | None:
        """The mean time of a model run so far (the model's own time where the run measured it)."""
        return self.model_s_total * 1000.0 / self.batches if self.batches else None

    @property
    def target_size(self) -> int:
        if self.adaptive is not None:
            return self.adaptive.target
        assert self.policy.max_size is not None
        return self.policy.max_size

    @property
    def pending(self) -> int:
        return self._pending

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def close(self) -> None:
        """Run what is queued, then stop; later ``submit`` calls fail."""
        self._closed = True
        self._changed.set()
        if self._task is not None:
            await self._task

    def cancel(self) -> None:
        """Stop at once: waiting requests are cancelled, not run."""
        self._closed = True
        for stream_id in list(self._queues):
            self.forget_stream(stream_id)
        if self._task is not None:
            self._task.cancel()
        for task in self._running:
            task.cancel()

    def submit(self, request: Request[P]) -> asyncio.Future[Any]:
        if self._closed:
            raise BatcherClosed("the batcher is closed")
        self.start()
        request.queued_at = self.clock.now()
        queue = self._queues.setdefault(request.stream_id, deque())
        queue.append(request)
        self._pending += 1
        limit = self._waiting_limits.get(request.stream_id, self.policy.max_waiting_per_stream)
        if limit is not None:
            self._supersede(queue, limit)
        self._changed.set()
        return request.future

    def limit_waiting(self, stream_id: str, items: int | None) -> None:
        """At most ``items`` of this stream wait (``None``: no bound), whatever the policy says."""
        if items is not None and items < 1:
            raise ValueError(f"a stream must be allowed at least one waiting item, got {items}")
        self._waiting_limits[stream_id] = items

    def _supersede(self, queue: deque[Request[P]], limit: int) -> None:
        units = list(dict.fromkeys(unit(r) for r in queue))
        for oldest in units[: max(0, len(units) - limit)]:
            self.superseded += 1
            for request in [r for r in queue if unit(r) == oldest]:
                queue.remove(request)
                self._pending -= 1
                if not request.future.done():
                    request.future.set_exception(Superseded("a newer item of the stream took its place"))

    def forget_stream(self, stream_id: str) -> None:
        """Cancel a stream's waiting requests (it ended or failed)."""
        self._waiting_limits.pop(stream_id, None)
        self._order.forget(stream_id)
        for request in self._queues.pop(stream_id, deque()):
            self._pending -= 1
            if not request.future.done():
                request.future.cancel()

    async def _loop(self) -> None:
        while True:
            self._changed.clear()
            if self._pending == 0 and self._closed:
                if self._running:
                    await asyncio.wait(self._running)
                return
            if self._pending == 0 or len(self._running) >= self.policy.max_concurrent:
                await self.clock.wait(self._changed, None)
                continue
            batch = self._take_if_due()
            if batch is None:
                if self._pending:  # else every waiting request was past its budget: wait for more
                    await self.clock.wait(self._changed, self._oldest_due())
                continue
            if self.policy.max_concurrent == 1:
                await self._execute(batch)
                continue
            # A batch is taken only when it can start: what waits meanwhile may still be
            # superseded by fresher frames, or joined by more requests.
            task = asyncio.get_running_loop().create_task(self._execute(batch), name="batch")
            self._running.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._changed.set()

    def _oldest(self) -> Request[P]:
        return min((q[0] for q in self._queues.values() if q), key=lambda r: r.queued_at)

    def _oldest_due(self) -> float:
        return self._oldest().queued_at + self.policy.max_delay_ms / 1000.0

    def _eligible(self, group: Hashable) -> int:
        """How many requests of ``group`` one batch could take now."""
        if self.policy.one_per_stream:
            return sum(1 for q in self._queues.values() if q and q[0].group == group)
        return sum(1 for q in self._queues.values() for r in q if r.group == group)

    def _take_if_due(self) -> list[Request[P]] | None:
        self._drop_late()
        if self._pending == 0:
            return None
        group = self._oldest().group
        size = self.target_size
        if not (self._closed or self._eligible(group) >= size or self.clock.now() >= self._oldest_due()):
            return None
        return self._take(group, size)

    def _drop_late(self) -> None:
        budget = self.policy.latency_budget_ms
        if budget is None:
            return
        now = self.clock.now()
        run_ms = self._expected_run_s() * 1000.0
        waited = {
            id(r): (now - r.captured_at) * 1000.0 for q in self._queues.values() for r in q if r.captured_at is not None
        }
        # A request stays if its age plus a run still fits the budget...
        run_allowance_ms = run_ms
        if run_ms >= budget or not any(ms + run_ms <= budget for ms in waited.values()):
            # ...unless no request can finish in time (the model is slower than the budget, or
            # everything waiting is too old): then those not yet over it stay, and the next batch
            # takes them in the order streams are served (``StreamOrder``: the freshest of those
            # whose turn it is, a stream left behind first), so the model never idles while a frame
            # is not yet late. Taking the freshest alone served the same few streams whenever a
            # busy machine made every run slower than the budget (1 frame in 10 s for one of 16
            # live streams, 27 for another): a stream whose frames come a little later never got
            # a turn.
            run_allowance_ms = 0.0
        for stream_id, queue in list(self._queues.items()):
            kept: deque[Request[P]] = deque()
            for request in queue:
                waited_ms = waited.get(id(request))
                on_time = waited_ms is None or waited_ms + run_allowance_ms <= budget
                if on_time:
                    kept.append(request)
                    continue
                assert waited_ms is not None
                self._pending -= 1
                self.deadline_drops += 1
                if not request.future.done():
                    request.future.set_exception(DeadlineMissed(waited_ms, budget, run_ms))
            self._queues[stream_id] = kept

    def _expected_run_s(self) -> float:
        """How long the batch about to run may take: the 90th percentile of its size's recent
        runs, or extrapolated from the sizes that ran (``estimate_run``). A percentile, not the
        mean: a frame admitted because a typical run would end in time finishes late whenever
        the run is slower than typical (on a shared machine, one in several), and those late
        frames are the latency's tail."""
        slow = {size: percentile(times, 0.9) for size, times in self._run_times.items()}
        return estimate_run(slow, min(self.target_size, self._pending))

    def _take(self, group: Hashable, size: int) -> list[Request[P]]:
        batch = self._order.take(self._queues, group, size)
        self._pending -= len(batch)
        return batch

    async def _execute(self, batch: list[Request[P]]) -> None:
        started = self.clock.now()
        for request in batch:
            request.started_at = started
            request.batch_size = len(batch)
        outcomes = await self._run_isolated(batch)
        finished = self.clock.now()
        measured = [r.model_s for r in batch if r.model_s is not None]
        model_s = max(measured) if measured else finished - started
        # A batch with failed items (retried one by one, or not run at all) is no measure of
        # what a run of its size costs.
        if not any(isinstance(outcome, BaseException) for outcome in outcomes):
            if self.adaptive is not None:
                # Preparing inside the run grows with the batch as the model's time does.
                prepare_s = max(r.prepare_s for r in batch) if measured else 0.0
                self.adaptive.record(len(batch), model_s + prepare_s)
                release = self.adaptive.take_release()
                if release is not None and self._release is not None:
                    self._release(release)
            self._run_times.setdefault(len(batch), deque(maxlen=RECENT_RUN_TIMES)).append(finished - started)
        self.model_s_total += model_s
        self.batches += 1
        self.batched_items += len(batch)
        for request, outcome in zip(batch, outcomes, strict=True):
            request.finished_at = finished
            if request.future.done():
                continue  # cancelled meanwhile (the stream ended)
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)

    async def _run_isolated(self, batch: list[Request[P]]) -> list[Any]:
        try:
            outcomes = list(await self._run(batch))
        except EngineError as exc:
            return [exc] * len(batch)  # the engine failed (its server is down), not one input
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            # One bad input must not sink the others: run each alone to find it.
            return [(await self._run_isolated([request]))[0] for request in batch]
        if len(outcomes) != len(batch):
            error = RuntimeError(f"batch of {len(batch)} returned {len(outcomes)} results")
            return [error] * len(batch)
        return outcomes
