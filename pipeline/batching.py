"""The stream-aware batcher: many streams' requests share one model run.

Requests wait in one queue per stream. A batch goes out when it is full or when the oldest
waiting request has waited ``max_delay_ms`` (never later than the next moment the model is free),
taking requests round-robin across streams so a flooding stream cannot starve a slow one (live or
budgeted streams: the freshest of the streams whose turn it is, ``Batcher._first_round``). Only
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

import asyncio
import contextlib
import math
import statistics
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from .errors import PipelineError

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


def overdue_ms(capture_time: float, budget_ms: float | None, *, now: float | None = None) -> float | None:
    """How long ago (ms) an item captured at ``capture_time`` (wall clock) was, if that is over
    ``budget_ms``; ``None`` while it is within the budget or there is no budget."""
    if budget_ms is None:
        return None
    age_ms = ((time.time() if now is None else now) - capture_time) * 1000.0
    return age_ms if age_ms > budget_ms else None


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


def estimate_run(measured: Mapping[int, float], size: int) -> float:
    """The run time of a batch of ``size``: measured, or extrapolated from the two biggest smaller
    sizes measured (a fixed cost plus a cost per item), or in proportion to the one there is (a
    batch rarely costs more per item than a smaller one); 0 with nothing smaller measured."""
    if size in measured:
        return measured[size]
    smaller = sorted(s for s in measured if s < size)
    if not smaller:
        return 0.0
    high = smaller[-1]
    if len(smaller) == 1:
        return measured[high] * size / high
    low = smaller[-2]
    per_item = max(0.0, (measured[high] - measured[low]) / (high - low))
    return measured[high] + per_item * (size - high)


RECENT_RUNS = 5
"""Runs of a batch size whose median is its cost."""

MIN_RUNS = 3
"""Runs of a batch size before its cost counts (within the budget)."""

PROBE_RUNS = 3
"""Batches in a row a probe of a neighbouring size runs."""

VERDICT_PROBES = 8
"""Probe periods after which a size ruled out (over the budget, out of reach) gets another try."""

RECENT_RUN_TIMES = 20
"""Runs of a batch size whose 90th percentile the deadline check expects a run to take."""


def _percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank: of 2 or 3 runs, the slowest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class AdaptiveSize:
    """Chooses a batch size from measured run times: most items per second within the budget.

    Sizes are powers of two up to ``limit``. The cost of each size is the median of its last
    five run times, once it has three (one run is not evidence on a shared machine), or at once
    when a size still being measured runs over the budget; the first run of each size is left
    out (a new batch shape warms up the engine, and the first runs happen while the pipeline is
    still starting). A bigger size must give ``margin`` more items per second than a smaller one
    to be chosen: bigger batches cost latency, so a gain within measurement noise is not worth
    it. After ``probe_every`` batches the next size up (or down) runs up to ``PROBE_RUNS``
    batches in a row (a shorter batch, or a run over the budget, ends the probe), so the choice
    follows the load and the machine: a completed probe's three fresh runs of five decide the
    size's median, where a single run left it to runs made under another load. A size the
    batcher keeps falling short of (fewer requests waiting than it holds) is out of reach, and
    that verdict, like a size ruled out over the budget, is reconsidered after
    ``VERDICT_PROBES`` probe periods.
    """

    def __init__(
        self, limit: int, *, budget_ms: float | None = None, probe_every: int = 16, margin: float = 0.1
    ) -> None:
        self.sizes = [1 << k for k in range(int(math.log2(max(1, limit))) + 1)]
        self.budget_ms = budget_ms
        self.probe_every = probe_every
        self.margin = margin
        self.cost_s: dict[int, float] = {}
        self._recent: dict[int, deque[float]] = {}
        self._runs: dict[int, int] = {}
        self.current = 1
        self._target = 1
        self._since_probe = 0
        self._probe_up = True
        self._probe_left = 0
        self._records = 0
        self._measured_at: dict[int, int] = {}
        """When (in records) each size's cost was last updated."""
        self._out_of_reach: dict[int, int] = {}
        """Sizes the batcher could not fill (fewer requests waiting), and when that was found."""
        self._short_runs = 0

    @property
    def target(self) -> int:
        return self._target

    def record(self, size: int, seconds: float) -> None:
        """A batch of ``size`` took ``seconds``; only sizes of the ladder count."""
        runs = self._runs[size] = self._runs.get(size, 0) + 1
        if size in self.sizes and runs > 1:
            # The median of the last few runs: one run slowed by a burst of decoding (16 streams
            # starting) must not decide, as it would in a moving average.
            recent = self._recent.setdefault(size, deque(maxlen=RECENT_RUNS))
            recent.append(seconds)
            over_budget = self.budget_ms is not None and 2.0 * seconds * 1000.0 > self.budget_ms
            if len(recent) >= MIN_RUNS or over_budget:
                self.cost_s[size] = statistics.median(recent)
                self._measured_at[size] = self._records
        self._records += 1
        self._note_short_run(size)
        self._forget_old_verdicts()
        if self._probe_left > 1 and size == self._target and self._fits(size):
            self._probe_left -= 1  # the probe goes on (not past a run over the budget)
            return
        self._probe_left = 0
        self.current = self._best()
        self._since_probe += 1
        self._target = self.current
        # No probe while the current size is still being measured (climbing to an untried one).
        if self._since_probe >= self.probe_every and self.current in self.cost_s:
            self._since_probe = 0
            self._target = self._neighbour()
            self._probe_left = PROBE_RUNS if self._target != self.current else 0

    def _note_short_run(self, size: int) -> None:
        """A target not measured yet that the batch keeps falling short of (fewer streams waiting
        than it holds: the batcher runs what there is after ``max_delay_ms``) is out of reach:
        climbing to it would only make every batch wait out the delay."""
        if size < self._target and self._target not in self.cost_s:
            self._short_runs += 1
            if self._short_runs >= self.probe_every:
                self._out_of_reach[self._target] = self._records
                self._short_runs = 0
        else:
            self._short_runs = 0

    def _forget_old_verdicts(self) -> None:
        """After ``VERDICT_PROBES`` probe periods, a size out of reach may be tried again, and a
        size ruled out over the budget is measured afresh (one slow spell must not rule it out
        for good: it is never run again to correct its cost otherwise)."""
        horizon = VERDICT_PROBES * self.probe_every
        for size, found in list(self._out_of_reach.items()):
            if self._records - found > horizon:
                del self._out_of_reach[size]
        for size in [s for s in self.cost_s if not self._fits(s)]:
            if self._records - self._measured_at.get(size, 0) > horizon:
                del self.cost_s[size]
                self._recent.pop(size, None)

    def _fits(self, size: int) -> bool:
        # A request may wait for the run before its own, then its own: two runs must fit.
        return self.budget_ms is None or 2.0 * self._cost(size) * 1000.0 <= self.budget_ms

    def _cost(self, size: int) -> float:
        """A size's measured run time; untried, extrapolated (``estimate_run``), so a size that
        cannot fit the budget is never tried."""
        return estimate_run(self.cost_s, size)

    def _best(self) -> int:
        measured = [s for s in self.sizes if s in self.cost_s and self._fits(s)]
        if not measured:
            return 1
        best = measured[0]
        for size in measured[1:]:
            if size / self.cost_s[size] > (1 + self.margin) * best / self.cost_s[best]:
                best = size
        # While the biggest size that fits is also the best, the next size up gets its turn, if
        # it has not had one: a size measured over the budget rules out every size above it.
        following = [s for s in self.sizes if s > best]
        if (
            best == measured[-1]
            and following
            and following[0] not in self.cost_s
            and following[0] not in self._out_of_reach
            and self._fits(following[0])
        ):
            return following[0]
        return best

    def _neighbour(self) -> int:
        index = self.sizes.index(self.current)
        self._probe_up = not self._probe_up
        step = 1 if self._probe_up else -1
        for candidate in (index + step, index - step):
            if not 0 <= candidate < len(self.sizes):
                continue
            size = self.sizes[candidate]
            # A size over the budget (measured, or at the same cost per item as a smaller one) is
            # not probed: its run would make every frame in it late (the tail a live stream sees).
            if self._fits(size) and size not in self._out_of_reach:
                return size
        return self.current


class Batcher(Generic[P]):
    """Collects requests from many streams into batches for ``run``; see the module docstring."""

    def __init__(self, run: RunBatch[P], policy: BatchPolicy, *, clock: Clock | None = None) -> None:
        if policy.max_size is not None and policy.max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {policy.max_size}")
        self._run = run
        self.policy = policy
        self.clock: Clock = clock or MonotonicClock()
        self.adaptive = None if policy.max_size else AdaptiveSize(policy.size_limit, budget_ms=policy.latency_budget_ms)
        self._queues: OrderedDict[str, deque[Request[P]]] = OrderedDict()
        self._pending = 0
        self._changed = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._waiting_limits: dict[str, int | None] = {}
        self._served_streams = 0
        """Streams served so far (a stream counts once per batch)."""
        self._last_served: dict[str, int] = {}
        """``_served_streams`` when each stream was last served."""
        self._passed_over: dict[str, int] = {}
        """Streams served while a stream's request waited, since its last turn (a round is every
        stream once)."""
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
        units = list(dict.fromkeys(_unit(r) for r in queue))
        for unit in units[: max(0, len(units) - limit)]:
            self.superseded += 1
            for request in [r for r in queue if _unit(r) == unit]:
                queue.remove(request)
                self._pending -= 1
                if not request.future.done():
                    request.future.set_exception(Superseded("a newer item of the stream took its place"))

    def forget_stream(self, stream_id: str) -> None:
        """Cancel a stream's waiting requests (it ended or failed)."""
        self._waiting_limits.pop(stream_id, None)
        self._passed_over.pop(stream_id, None)
        self._last_served.pop(stream_id, None)
        for request in self._queues.pop(stream_id, deque()):
            self._pending -= 1
            if not request.future.done():
                request.future.cancel()

    async def _loop(self) -> None:
        while True:
            self._changed.clear()
            if self._pending == 0:
                if self._closed:
                    return
                await self.clock.wait(self._changed, None)
                continue
            batch = self._take_if_due()
            if batch is None:
                if self._pending:  # else every waiting request was past its budget: wait for more
                    await self.clock.wait(self._changed, self._oldest_due())
                continue
            await self._execute(batch)

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
        keep: set[int] | None = None
        if run_ms >= budget or not any(ms + run_ms <= budget for ms in waited.values()):
            # No request can finish in time (the model is slower than the budget, or everything
            # waiting is too old): the freshest not yet over it still run, one batch of them, so the
            # model never idles while a frame is not yet late; the rest could only be later still.
            fresh = sorted((ms, key) for key, ms in waited.items() if ms <= budget)
            keep = {key for _, key in fresh[: self.target_size]}
        for stream_id, queue in list(self._queues.items()):
            kept: deque[Request[P]] = deque()
            for request in queue:
                waited_ms = waited.get(id(request))
                on_time = waited_ms is None or (
                    id(request) in keep if keep is not None else waited_ms + run_ms <= budget
                )
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
        slow = {size: _percentile(times, 0.9) for size, times in self._run_times.items()}
        return estimate_run(slow, min(self.target_size, self._pending))

    def _take(self, group: Hashable, size: int) -> list[Request[P]]:
        """Round-robin over streams, one request per stream per round, oldest streams first (with
        latency budgets, the freshest of the streams that waited longest: ``_first_round``)."""
        batch: list[Request[P]] = []
        served: list[str] = []
        while len(batch) < size:
            took = False
            for stream_id in self._first_round(group, size) if not served else list(self._queues):
                queue = self._queues[stream_id]
                if len(batch) >= size:
                    break
                request = self._next_of(queue, group, first_round=stream_id not in served)
                if request is None:
                    continue
                queue.remove(request)
                batch.append(request)
                served.append(stream_id)
                took = True
            if not took or self.policy.one_per_stream:
                break
        self._pending -= len(batch)
        first_round = set(served)
        for stream_id, queue in self._queues.items():
            if stream_id not in first_round and self._next_of(queue, group, first_round=True) is not None:
                self._passed_over[stream_id] = self._passed_over.get(stream_id, 0) + len(first_round)
        # Streams served go to the back: the next batch starts with the ones that waited. (An
        # emptied queue stays: the order is every stream's, until ``forget_stream``.)
        self._served_streams += len(first_round)
        for stream_id in dict.fromkeys(served):
            self._passed_over.pop(stream_id, None)
            self._last_served[stream_id] = self._served_streams
            self._queues.move_to_end(stream_id)
        return batch

    def _first_round(self, group: Hashable, size: int) -> list[str]:
        """The order of streams for a batch's first round. Plain round-robin, unless every waiting
        request of the group has a capture time (live streams, latency budgets): then, of the
        waiting streams in the half of all streams served longest ago (at least ``size``), those
        with the freshest request go first. On a live overload (each stream's newest frame
        waiting, the model taking one now and then) that runs a frame a few ms old instead of one
        up to a frame interval old.

        A stream is not left behind for long: once more than half a round (every stream served
        once) has been served while its request waited, that request counts as fresher by a
        growing share of the spread of the waiting requests' ages. A stream whose frame is always
        the oldest still gets its turn within about two rounds, at any batch size (a unit test).
        The latency budget comes first: a frame too old to finish in time is dropped, whatever
        its stream's turn (``_drop_late``)."""
        order = list(self._queues)
        captured: dict[str, float] = {}
        for stream_id, queue in self._queues.items():
            head = self._next_of(queue, group, first_round=True)
            if head is not None:
                if head.captured_at is None:
                    return order
                captured[stream_id] = head.captured_at
        waiting = [s for s in order if s in captured]
        if len(waiting) <= size:
            return order
        # The half is of the streams taking part: waiting now, or served within the last round
        # (their next frame is on its way; a stalled stream, idle longer, does not count). One
        # served lately waits for half of them to be served before it can go first again.
        recent = len(order)
        taking_part = [
            s for s in order if s in captured or self._served_streams - self._last_served.get(s, -recent) < recent
        ]
        rounds = len(taking_part)
        older_half = set(taking_part[: math.ceil(rounds / 2)])
        window = [s for s in waiting if s in older_half or self._passed_over.get(s, 0) > rounds / 2]
        window += [s for s in waiting if s not in window][: max(0, size - len(window))]
        spread = max(captured[s] for s in window) - min(captured[s] for s in window)

        def freshness(stream_id: str) -> float:
            behind = max(0.0, self._passed_over.get(stream_id, 0) - rounds / 2) / rounds
            return captured[stream_id] + behind * spread

        first = sorted(window, key=freshness, reverse=True)
        return first + [s for s in order if s not in first]

    def _next_of(self, queue: deque[Request[P]], group: Hashable, *, first_round: bool) -> Request[P] | None:
        if self.policy.one_per_stream:
            return queue[0] if first_round and queue and queue[0].group == group else None
        return next((r for r in queue if r.group == group), None)

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
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            # One bad input must not sink the others: run each alone to find it.
            return [(await self._run_isolated([request]))[0] for request in batch]
        if len(outcomes) != len(batch):
            error = RuntimeError(f"batch of {len(batch)} returned {len(outcomes)} results")
            return [error] * len(batch)
        return outcomes


def _unit(request: Request[Any]) -> Hashable:
    return request if request.item is None else request.item
