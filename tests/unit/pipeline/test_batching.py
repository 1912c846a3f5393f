"""pipeline.batching: driven by a manual clock, never by sleeping."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import pytest

from pipeline.batching import (
    AdaptiveSize,
    Batcher,
    BatcherClosed,
    BatchPolicy,
    DeadlineMissed,
    Request,
    Superseded,
)
from pipeline.batching.sizing import PROBE_BACKOFF, PROBE_RUNS
from pipeline.media import overdue_ms


class ManualClock:
    """Time stands still until ``advance``; ``wait`` returns on the event or a passed deadline."""

    def __init__(self) -> None:
        self.t = 1000.0
        self._timers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def wait(self, event: asyncio.Event, until: float | None) -> None:
        if until is not None and self.t >= until:
            return
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (until if until is not None else float("inf"), timer)
        self._timers.append(entry)
        woken = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait([woken, timer], return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            self._timers.remove(entry)

    def advance(self, seconds: float) -> None:
        self.t += seconds
        for until, timer in self._timers:
            if until <= self.t and not timer.done():
                timer.set_result(None)


class Model:
    """Records each batch; fails on payload 'bad'; optionally costs clock time per batch."""

    def __init__(self, clock: ManualClock, cost: Callable[[int], float] | None = None) -> None:
        self.clock = clock
        self.cost = cost
        self.batches: list[list[tuple[str, Any]]] = []

    async def run(self, batch: list[Request[Any]]) -> Sequence[Any]:
        self.batches.append([(r.stream_id, r.payload) for r in batch])
        if self.cost is not None:
            self.clock.advance(self.cost(len(batch)))
        if any(r.payload == "bad" for r in batch):
            raise ValueError("bad input")
        return [f"out:{r.payload}" for r in batch]


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def make(policy: BatchPolicy, cost: Callable[[int], float] | None = None) -> tuple[Batcher[Any], Model, ManualClock]:
    clock = ManualClock()
    model = Model(clock, cost)
    return Batcher(model.run, policy, clock=clock), model, clock


def submit(
    batcher: Batcher[Any], stream: str, payload: Any, group: Hashable = None, captured_at: float | None = None
) -> asyncio.Future[Any]:
    return batcher.submit(Request(stream, payload, group=group, captured_at=captured_at))


async def test_a_full_batch_goes_at_once():
    batcher, model, _ = make(BatchPolicy(max_size=4, max_delay_ms=100))
    futures = [submit(batcher, "a", i) for i in range(4)]
    await settle()
    assert model.batches == [[("a", 0), ("a", 1), ("a", 2), ("a", 3)]]
    assert [f.result() for f in futures] == ["out:0", "out:1", "out:2", "out:3"]
    await batcher.close()


async def test_a_partial_batch_goes_when_the_oldest_has_waited_max_delay():
    batcher, model, clock = make(BatchPolicy(max_size=4, max_delay_ms=100))
    submit(batcher, "a", 0)
    clock.advance(0.05)
    submit(batcher, "b", 1)
    await settle()
    clock.advance(0.0499)
    await settle()
    assert model.batches == []
    clock.advance(0.0002)  # 100 ms after the first request: not a moment later
    await settle()
    assert model.batches == [[("a", 0), ("b", 1)]]
    await batcher.close()


async def test_round_robin_keeps_a_flooding_stream_from_starving_a_slow_one():
    batcher, model, clock = make(BatchPolicy(max_size=4, max_delay_ms=10))
    for i in range(20):
        submit(batcher, "flood", i)
    slow = [submit(batcher, "slow", f"s{i}") for i in range(2)]
    await settle()
    assert model.batches[0] == [("flood", 0), ("slow", "s0"), ("flood", 1), ("slow", "s1")]
    assert all(f.done() for f in slow)
    clock.advance(1)
    await batcher.close()
    assert sum(len(b) for b in model.batches) == 22


async def test_streams_served_last_go_to_the_back_of_the_line():
    batcher, model, _ = make(BatchPolicy(max_size=2, max_delay_ms=10))
    for stream in ("a", "b", "c"):
        for i in range(2):
            submit(batcher, stream, f"{stream}{i}")
    await settle()
    firsts = [batch[0][0] for batch in model.batches]
    assert model.batches[0] == [("a", "a0"), ("b", "b0")]
    assert model.batches[1][0] == ("c", "c0"), firsts  # c waited longest, it goes first
    await batcher.close()


class GatedModel:
    """A model whose every run waits for ``release``: the test decides when the model is free."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self._gate = asyncio.Event()

    async def run(self, batch: list[Request[Any]]) -> Sequence[Any]:
        self.batches.append([r.stream_id for r in batch])
        await self._gate.wait()
        self._gate.clear()
        return [r.payload for r in batch]

    async def release(self) -> None:
        self._gate.set()
        await settle()


async def test_with_budgets_the_freshest_of_the_streams_that_waited_longest_goes_first():
    clock = ManualClock()
    model = GatedModel()
    batcher: Batcher[Any] = Batcher(model.run, BatchPolicy(max_size=1, latency_budget_ms=1000), clock=clock)
    ages_ms = {"a": 40, "b": 30, "c": 10, "d": 20}  # a and b waited longest (never served, first in)
    for stream, age in ages_ms.items():
        submit(batcher, stream, stream, captured_at=clock.now() - age / 1000.0)
    await settle()
    # Round-robin alone would run a (40 ms old); c is the freshest but waited least.
    assert model.batches == [["b"]]
    for _ in range(3):
        await model.release()
    assert sorted(s for batch in model.batches for s in batch) == ["a", "b", "c", "d"]
    await model.release()
    await batcher.close()


@pytest.mark.parametrize(("streams", "size"), [(6, 1), (12, 3)])
async def test_picking_the_freshest_never_starves_a_stream_whose_frames_are_always_older(streams, size):
    clock = ManualClock()
    model = GatedModel()
    policy = BatchPolicy(max_size=size, latency_budget_ms=1000, max_waiting_per_stream=1)
    batcher: Batcher[Any] = Batcher(model.run, policy, clock=clock)
    names = ["late", *(f"s{k}" for k in range(1, streams))]

    def newest_frames() -> None:
        for k, stream in enumerate(names):  # "late" always has the oldest frame
            submit(batcher, stream, stream, captured_at=clock.now() - (0.030 if stream == "late" else 0.001 * k))

    newest_frames()
    await settle()
    for _ in range(12 * streams // size):
        clock.advance(0.040)
        newest_frames()
        await model.release()
    served = [stream for batch in model.batches for stream in batch]
    turns = [i for i, stream in enumerate(served) if stream == "late"]
    # Items served between two of its turns, in rounds (every stream once): about two at most,
    # whatever the batch size.
    gaps = [(b - a) / streams for a, b in zip([-1, *turns], turns, strict=False)]
    assert len(turns) >= 4 and max(gaps) <= 2.2, model.batches
    batcher.cancel()


async def test_with_every_run_slower_than_the_budget_a_stream_whose_frames_are_older_still_gets_its_turn():
    # A busy machine: each run takes 40 ms against a 35 ms budget, so no frame can finish in time
    # and only those not yet over it run. "late"'s frame is always 30 ms old, the others' fresher:
    # taking the freshest alone never ran "late" (one live stream of 16 got 1 frame in 10 s).
    clock = ManualClock()
    model = GatedModel()
    policy = BatchPolicy(max_size=1, latency_budget_ms=35, max_waiting_per_stream=1)
    batcher: Batcher[Any] = Batcher(model.run, policy, clock=clock)
    names = ["late", *(f"s{k}" for k in range(1, 6))]

    def newest_frames() -> None:
        for k, stream in enumerate(names):
            submit(batcher, stream, stream, captured_at=clock.now() - (0.030 if stream == "late" else 0.001 * k))

    newest_frames()
    await settle()
    for _ in range(12 * len(names)):
        clock.advance(0.040)  # the run in progress takes 40 ms of the clock
        newest_frames()
        await model.release()
    served = [stream for batch in model.batches for stream in batch]
    turns = [i for i, stream in enumerate(served) if stream == "late"]
    gaps = [(b - a) / len(names) for a, b in zip([-1, *turns], turns, strict=False)]
    assert len(turns) >= 4 and max(gaps) <= 2.2, served
    batcher.cancel()


async def test_stalled_streams_do_not_turn_freshest_first_back_into_round_robin():
    clock = ManualClock()
    model = GatedModel()
    policy = BatchPolicy(max_size=1, latency_budget_ms=1000, max_waiting_per_stream=1)
    batcher: Batcher[Any] = Batcher(model.run, policy, clock=clock)
    for k in range(10):  # cameras that sent one frame and stalled (their streams stay open)
        submit(batcher, f"stalled{k}", "x", captured_at=clock.now())
    await settle()
    for _ in range(10):
        await model.release()
    active = [f"a{k}" for k in range(6)]
    ages: list[float] = []
    for batch in range(60):
        clock.advance(0.040)
        for k, stream in enumerate(active):  # each camera's newest frame, phases spread over 40 ms
            submit(batcher, stream, stream, captured_at=clock.now() - ((batch * 7 + k * 13) % 40) / 1000.0)
        await model.release()
        (stream,) = model.batches[-1]
        if batch >= 10 and stream in active:
            ages.append((batch * 7 + active.index(stream) * 13) % 40)
    # Round-robin would run frames 20 ms old on average; freshest-first, a few ms.
    assert sum(ages) / len(ages) < 12, ages
    batcher.cancel()


async def test_per_stream_order_is_kept_across_batches():
    batcher, model, clock = make(BatchPolicy(max_size=3, max_delay_ms=5))
    for i in range(10):
        submit(batcher, "a", i)
        if i % 3 == 0:
            submit(batcher, "b", i)
        await settle()
    clock.advance(1)
    await batcher.close()
    seen: dict[str, list[Any]] = {}
    for batch in model.batches:
        for stream, payload in batch:
            seen.setdefault(stream, []).append(payload)
    assert seen == {"a": list(range(10)), "b": [0, 3, 6, 9]}


async def test_an_error_fails_only_its_own_request():
    batcher, model, _ = make(BatchPolicy(max_size=3, max_delay_ms=100))
    good1, bad, good2 = submit(batcher, "a", 1), submit(batcher, "b", "bad"), submit(batcher, "c", 2)
    await settle()
    assert (good1.result(), good2.result()) == ("out:1", "out:2")
    with pytest.raises(ValueError, match="bad input"):
        bad.result()
    # The whole batch first, then each request alone to isolate the bad one.
    assert [len(b) for b in model.batches] == [3, 1, 1, 1]
    await batcher.close()


async def test_requests_past_their_budget_are_dropped_before_inference_and_counted():
    batcher, model, clock = make(BatchPolicy(max_size=4, max_delay_ms=20, latency_budget_ms=50))
    late = submit(batcher, "a", "late", captured_at=clock.now() - 0.060)
    fresh = submit(batcher, "a", "fresh", captured_at=clock.now() - 0.010)
    unbudgeted = submit(batcher, "b", "live-less")
    clock.advance(0.020)
    await settle()
    with pytest.raises(DeadlineMissed) as info:
        late.result()
    assert info.value.budget_ms == 50 and info.value.waited_ms > 50
    assert fresh.result() == "out:fresh" and unbudgeted.result() == "out:live-less"
    assert model.batches == [[("a", "fresh"), ("b", "live-less")]]
    assert batcher.deadline_drops == 1
    await batcher.close()


async def test_a_queue_emptied_by_deadline_drops_keeps_the_batcher_serving():
    batcher, model, clock = make(BatchPolicy(max_size=1, latency_budget_ms=50))
    late = submit(batcher, "a", "late", captured_at=clock.now() - 1.0)
    await settle()
    assert isinstance(late.exception(), DeadlineMissed)
    fresh = submit(batcher, "a", "fresh", captured_at=clock.now())
    await settle()
    assert fresh.result() == "out:fresh"
    assert model.batches == [[("a", "fresh")]]
    await batcher.close()


async def test_a_request_that_cannot_finish_within_its_budget_is_not_run():
    batcher, model, clock = make(BatchPolicy(max_size=1, latency_budget_ms=50), cost=lambda n: 0.030)
    first = submit(batcher, "a", "first", captured_at=clock.now())
    await settle()  # runs (nothing measured yet) and teaches the batcher that a run takes 30 ms
    assert first.result() == "out:first"
    doomed = submit(batcher, "a", "doomed", captured_at=clock.now() - 0.025)  # 25 + 30 > 50
    in_time = submit(batcher, "b", "in-time", captured_at=clock.now() - 0.015)  # 15 + 30 <= 50
    await settle()
    with pytest.raises(DeadlineMissed) as info:
        doomed.result()
    assert info.value.run_ms == pytest.approx(30.0) and info.value.waited_ms == pytest.approx(25.0)
    assert in_time.result() == "out:in-time"
    assert model.batches == [[("a", "first")], [("b", "in-time")]]
    assert batcher.deadline_drops == 1
    await batcher.close()


async def test_a_batch_size_not_measured_yet_is_expected_to_cost_as_much_per_item():
    batcher, _model, clock = make(BatchPolicy(max_size=2, latency_budget_ms=100), cost=lambda n: 0.030 * n)
    first = submit(batcher, "a", "first", captured_at=clock.now())
    await settle()  # a batch of 1 runs: 30 ms; a batch of 2 was never run
    assert first.result() == "out:first"
    # A batch of two is expected to take 2 x 30 ms, not the 30 ms of one: 45 + 60 > 100.
    doomed = submit(batcher, "a", "doomed", captured_at=clock.now() - 0.045)
    kept = submit(batcher, "b", "kept", captured_at=clock.now() - 0.035)  # 35 + 60 <= 100
    await settle()
    assert isinstance(doomed.exception(), DeadlineMissed)
    assert kept.result() == "out:kept"
    await batcher.close()


async def test_when_nothing_waiting_could_finish_in_time_the_freshest_not_yet_late_still_runs():
    batcher, _model, clock = make(BatchPolicy(max_size=1, latency_budget_ms=50), cost=lambda n: 0.030)
    first = submit(batcher, "a", "first", captured_at=clock.now())
    await settle()  # a run is now known to take 30 ms
    assert first.result() == "out:first"
    # Both would finish late (25 + 30 > 50), neither is over the budget yet: the model must not
    # idle while they are dropped one after another; the one past it (60 ms) is dropped.
    late = submit(batcher, "a", "late", captured_at=clock.now() - 0.025)
    gone = submit(batcher, "b", "gone", captured_at=clock.now() - 0.060)
    await settle()
    assert late.result() == "out:late"
    assert isinstance(gone.exception(), DeadlineMissed)
    await batcher.close()


async def test_a_model_slower_than_the_budget_still_runs_the_requests_not_yet_over_it():
    batcher, model, clock = make(BatchPolicy(max_size=1, latency_budget_ms=50), cost=lambda n: 0.080)
    first = submit(batcher, "a", "first", captured_at=clock.now())
    await settle()
    assert first.result() == "out:first"  # and a run is now known to take 80 ms, over the budget
    fresh = submit(batcher, "a", "fresh", captured_at=clock.now() - 0.010)
    stale = submit(batcher, "b", "stale", captured_at=clock.now() - 0.060)
    await settle()
    assert fresh.result() == "out:fresh"
    assert isinstance(stale.exception(), DeadlineMissed)
    assert model.batches == [[("a", "first")], [("a", "fresh")]]
    await batcher.close()


async def test_a_newer_item_of_a_live_stream_supersedes_the_waiting_one():
    batcher, model, clock = make(BatchPolicy(max_size=4, max_delay_ms=100, max_waiting_per_stream=1))
    old = submit(batcher, "a", "a0")
    other = submit(batcher, "b", "b0")
    new = submit(batcher, "a", "a1")
    await settle()
    assert isinstance(old.exception(), Superseded)
    assert batcher.superseded == 1 and batcher.pending == 2
    clock.advance(0.100)
    await settle()
    assert model.batches == [[("a", "a1"), ("b", "b0")]]
    assert new.result() == "out:a1" and other.result() == "out:b0"
    await batcher.close()


async def test_an_items_requests_are_superseded_together_and_a_streams_own_limit_wins():
    batcher, model, clock = make(BatchPolicy(max_size=8, max_delay_ms=10))
    batcher.limit_waiting("live", 1)
    crops = [batcher.submit(Request("live", f"x{i}", item="frame0")) for i in range(3)]
    files = [submit(batcher, "file", f"f{i}") for i in range(3)]  # no bound: the policy has none
    newer = [batcher.submit(Request("live", f"y{i}", item="frame1")) for i in range(2)]
    await settle()
    assert all(isinstance(f.exception(), Superseded) for f in crops)
    assert batcher.superseded == 1  # one item, three requests
    clock.advance(0.010)
    await settle()
    assert sorted(p for _, p in model.batches[0]) == ["f0", "f1", "f2", "y0", "y1"]
    assert [f.result() for f in files + newer] == ["out:f0", "out:f1", "out:f2", "out:y0", "out:y1"]
    with pytest.raises(ValueError):
        batcher.limit_waiting("live", 0)
    await batcher.close()


def test_overdue_is_the_age_only_once_past_the_budget():
    assert overdue_ms(100.0, 50.0, now=100.060) == pytest.approx(60.0)
    assert overdue_ms(100.0, 50.0, now=100.040) is None
    assert overdue_ms(100.0, None, now=200.0) is None


async def test_the_mean_model_time_counts_the_models_own_time():
    clock = ManualClock()

    async def run(batch: list[Request[Any]]) -> Sequence[Any]:
        clock.advance(1.0)  # waiting for a thread
        for request in batch:
            request.model_s = 0.020
        return [None] * len(batch)

    batcher: Batcher[Any] = Batcher(run, BatchPolicy(max_size=1), clock=clock)
    assert batcher.mean_model_ms is None
    for i in range(3):
        batcher.submit(Request("s", i))
    await batcher.close()
    assert batcher.batches == 3 and batcher.mean_model_ms == pytest.approx(20.0)


async def test_only_one_group_shares_a_batch_oldest_group_first():
    batcher, model, clock = make(BatchPolicy(max_size=4, max_delay_ms=10))
    submit(batcher, "a", "wide", group=(48, 320))
    submit(batcher, "a", "narrow", group=(48, 64))
    submit(batcher, "b", "wide2", group=(48, 320))
    clock.advance(0.010)
    await settle()
    clock.advance(0.010)
    await settle()
    assert model.batches == [[("a", "wide"), ("b", "wide2")], [("a", "narrow")]]
    await batcher.close()


async def test_one_per_stream_keeps_a_streams_requests_in_separate_batches():
    batcher, model, clock = make(BatchPolicy(max_size=4, max_delay_ms=10, one_per_stream=True))
    for i in range(3):
        submit(batcher, "a", f"a{i}")
    submit(batcher, "b", "b0")
    clock.advance(0.010)
    await settle()
    clock.advance(0.010)
    await settle()
    clock.advance(0.010)
    await settle()
    assert model.batches == [[("a", "a0"), ("b", "b0")], [("a", "a1")], [("a", "a2")]]
    await batcher.close()


async def test_one_per_stream_is_full_with_max_size_distinct_streams():
    batcher, model, _ = make(BatchPolicy(max_size=2, max_delay_ms=100, one_per_stream=True))
    submit(batcher, "a", 0)
    submit(batcher, "a", 1)
    await settle()
    assert model.batches == []  # two requests but one stream: not a full batch
    submit(batcher, "b", 0)
    await settle()
    assert model.batches == [[("a", 0), ("b", 0)]]
    await batcher.close()


async def test_close_runs_what_is_queued_then_refuses_more():
    batcher, _, _ = make(BatchPolicy(max_size=8, max_delay_ms=1000))
    future = submit(batcher, "a", 0)
    await batcher.close()
    assert future.result() == "out:0"
    with pytest.raises(BatcherClosed):
        submit(batcher, "a", 1)


async def test_forget_stream_cancels_its_waiting_requests():
    batcher, model, clock = make(BatchPolicy(max_size=8, max_delay_ms=10))
    gone = submit(batcher, "a", 0)
    kept = submit(batcher, "b", 0)
    batcher.forget_stream("a")
    clock.advance(0.010)
    await settle()
    assert gone.cancelled()
    assert kept.result() == "out:0"
    assert model.batches == [[("b", 0)]]
    await batcher.close()


async def test_requests_carry_their_wait_and_run_times():
    batcher, _, clock = make(BatchPolicy(max_size=2, max_delay_ms=30), cost=lambda n: 0.005)
    request = Request("a", 0)
    batcher.submit(request)
    clock.advance(0.030)
    await settle()
    assert request.future.done()
    assert request.wait_ms == pytest.approx(30)
    assert request.run_ms == pytest.approx(5)
    assert request.batch_size == 1
    await batcher.close()


# --- adaptive size ----------------------------------------------------------------------------------


def converge(cost: Callable[[int], float], limit: int = 16, budget_ms: float | None = None, rounds: int = 200) -> int:
    adaptive = AdaptiveSize(limit, budget_ms=budget_ms)
    for _ in range(rounds):
        size = adaptive.target
        adaptive.record(size, cost(size))
    return adaptive.current


def test_auto_grows_while_bigger_batches_pay():
    assert converge(lambda n: 0.010 + 0.002 * n) == 16  # fixed cost amortised: biggest wins


def test_auto_stays_small_when_bigger_batches_are_slower_per_item():
    # As ONNX Runtime on a 2-core CPU: 12.9 images/s alone, 9.7 at batch 8.
    assert converge(lambda n: n / (12.9 - 0.45 * (n - 1))) == 1


def test_auto_does_not_trade_latency_for_a_gain_within_noise():
    # As the benchmark measured: 27.2 ms alone, 2 x 28.1 ms at batch 2 (3% fewer frames/s) and
    # 4 x 34.1 at batch 4. Batch 2 measured 5% faster by luck must not win.
    per_frame = {1: 0.0272, 2: 0.0281 * 0.92, 4: 0.0341}
    assert converge(lambda n: n * per_frame.get(n, 0.040)) == 1


def test_a_load_that_fades_as_streams_start_does_not_make_bigger_batches_look_cheaper():
    # As bench/batching measured with 16 file streams: a frame costs 50 ms at any batch size, but
    # while the decoders burst at the start every run is slower, less so as time goes on. Each
    # size measured after the one before looked cheaper (87, 65, 54 ms a frame), and auto climbed
    # to 8, which ran the pipeline 15% slower than batch 1.
    adaptive = AdaptiveSize(16)
    elapsed_s, sizes = 0.0, []
    for _ in range(100):
        sizes.append(adaptive.target)
        seconds = 0.050 * adaptive.target * (1.0 + math.exp(-elapsed_s))  # twice as slow at first
        elapsed_s += seconds
        adaptive.record(adaptive.target, seconds)
    assert max(sizes) <= 2 and adaptive.current == 1


def test_a_slow_first_run_does_not_decide():
    adaptive = AdaptiveSize(16)
    adaptive.record(1, 5.0)  # the pipeline was still starting
    for _ in range(100):
        size = adaptive.target
        adaptive.record(size, size * 0.030)  # batching gains nothing at all
    assert adaptive.current == 1
    assert adaptive.cost_s[1] == pytest.approx(0.030)


def test_auto_keeps_inside_the_latency_budget():
    # A request may wait for one run and then have its own: two runs of 4 (36 ms) fit in 50 ms,
    # two of 8 (52 ms) do not.
    assert converge(lambda n: 0.010 + 0.002 * n, budget_ms=50) == 4


def test_auto_never_jumps_past_a_size_measured_over_the_budget():
    # Under load: batch 1 fits a 150 ms budget (2 x 68 ms), 2, 4 and 8 were measured over it.
    # Batch 16, never tried, is even slower: it must not be picked because it is untried.
    adaptive = AdaptiveSize(16, budget_ms=150)
    for size, seconds in [(1, 0.068), (2, 0.156), (4, 0.500), (8, 0.624)]:
        adaptive.record(size, seconds)
        adaptive.record(size, seconds)  # the first run of a size does not count
    assert adaptive.current == 1


def test_auto_does_not_probe_a_size_measured_over_the_budget():
    adaptive = AdaptiveSize(16, budget_ms=100, probe_every=4)
    for size, seconds in [(1, 0.048), (1, 0.048), (2, 0.100), (2, 0.100)]:
        adaptive.record(size, seconds)
    targets = set()
    for _ in range(40):
        targets.add(adaptive.target)
        adaptive.record(adaptive.target, 0.048 * adaptive.target)
    assert targets == {1}  # batch 2 (two runs of 96-100 ms) cannot fit 100 ms: never tried again


def test_auto_does_not_try_a_size_that_could_only_fit_if_batching_paid():
    # 48 ms at batch 1 and a 150 ms budget: a batch of 2 at the same cost per item (96 ms, twice
    # over: 192 ms) cannot fit, so it is not tried; with a 250 ms budget it is.
    tight = AdaptiveSize(16, budget_ms=150, probe_every=4)
    roomy = AdaptiveSize(16, budget_ms=250, probe_every=4)
    for adaptive in (tight, roomy):
        for _ in range(12):
            adaptive.record(adaptive.target, 0.048 * adaptive.target)
    assert 2 not in tight.cost_s and tight.current == 1
    assert 2 in roomy.cost_s


def test_a_probe_measures_a_size_afresh_so_runs_under_another_load_do_not_keep_it_out():
    adaptive = AdaptiveSize(2, probe_every=8)
    busy = True  # while the pipeline starts, batch 2 happens to run slowly...

    def record() -> None:
        size = adaptive.target
        adaptive.record(size, 0.030 if size == 1 else (0.200 if busy else 0.040))

    for _ in range(20):
        record()
    assert adaptive.current == 1 and adaptive.cost_s[2] == pytest.approx(0.200)
    busy = False  # ...then 2 frames cost 40 ms a run against 2 x 30 ms one by one
    batches = 0
    while adaptive.current != 2 and batches < 200:
        record()
        batches += 1
    # Two probes: the first one's runs outvote the old ones in the median, but runs of 200 and
    # 40 ms side by side are too noisy to decide on; the second one's (after a wait twice as
    # long: the first changed nothing) are all at 40 ms.
    assert adaptive.current == 2 and batches <= 8 + 2 * 16 + 2 * PROBE_RUNS + 2


def test_a_size_ruled_out_by_one_slow_spell_gets_measured_again():
    adaptive = AdaptiveSize(16, budget_ms=100)
    spiked = False
    for _ in range(2000):
        size = adaptive.target
        seconds = 0.005 + 0.001 * size
        if size == 8 and not spiked and adaptive._runs.get(8, 0) == 1:
            seconds, spiked = 0.200, True  # size 8's first counted run, in a burst of decoding
        adaptive.record(size, seconds)
    assert spiked
    assert adaptive.current == 16  # 5 ms + 1 ms a frame: the biggest batch pays, and fits


def test_a_size_the_batcher_cannot_fill_is_given_up_for_a_while():
    # Three live streams, one frame each waiting: a batch of 4 never fills, and climbing to it
    # would make every batch wait out max_delay_ms.
    adaptive = AdaptiveSize(16, probe_every=16)
    targets = []
    for _ in range(400):
        targets.append(adaptive.target)
        size = min(adaptive.target, 3)
        adaptive.record(size, 0.005 + 0.001 * size)
    assert adaptive.current == 2
    assert targets[-200:].count(4) <= 40  # a retry now and then, not for good


def test_one_disturbed_run_does_not_move_the_cost():
    adaptive = AdaptiveSize(16)
    for seconds in (0.030, 0.030, 0.030, 0.150, 0.030):  # the first is left out; one spike among the rest
        adaptive.record(1, seconds)
    assert adaptive.cost_s[1] == pytest.approx(0.030)


def test_auto_follows_a_change_in_cost():
    adaptive = AdaptiveSize(16)
    cheap_big = lambda n: 0.010 + 0.001 * n  # noqa: E731
    for _ in range(200):
        adaptive.record(adaptive.target, cheap_big(adaptive.target))
    assert adaptive.current == 16
    costly_big = lambda n: 0.010 * n * n  # noqa: E731  the machine got busy: big batches now hurt
    for _ in range(400):
        adaptive.record(adaptive.target, costly_big(adaptive.target))
    assert adaptive.current == 1


def test_settling_more_than_one_size_down_releases_the_memory_of_the_bigger_ones_once():
    adaptive = AdaptiveSize(16, probe_every=8)
    for _ in range(200):  # bigger batches pay: it climbs to 16
        adaptive.record(adaptive.target, 0.010 + 0.001 * adaptive.target)
        assert adaptive.take_release() is None
    assert adaptive.current == 16
    releases = []
    for _ in range(600):  # the machine got busy: big batches now hurt, it comes down to 1
        size = adaptive.target
        adaptive.record(size, 0.010 * size * size)
        release = adaptive.take_release()
        if release is not None:
            releases.append(release)
    assert adaptive.current == 1
    assert releases and releases[-1] == 1 and len(releases) <= 4  # on the way down, not after each run


def test_probes_one_size_up_keep_their_memory():
    adaptive = AdaptiveSize(16, probe_every=8)
    for _ in range(300):  # flat cost a frame: it stays at 1 and probes 2 now and then
        adaptive.record(adaptive.target, 0.030 * adaptive.target)
        assert adaptive.take_release() is None  # the next probe would take it from the system again
    assert adaptive.current == 1 and 2 in adaptive.cost_s


def test_probes_that_change_nothing_come_less_often():
    adaptive = AdaptiveSize(16, probe_every=8)
    targets = []
    for _ in range(600):  # batch 2 always costs 20% more per frame: every probe of it is a loss
        targets.append(adaptive.target)
        adaptive.record(adaptive.target, 0.030 if adaptive.target == 1 else 0.036 * adaptive.target)
    late_probes = targets[-320:].count(2)
    assert adaptive.current == 1
    assert late_probes <= PROBE_RUNS * (320 // (PROBE_BACKOFF * 8) + 1)  # every 32 batches, not every 8


def test_a_probe_down_from_a_size_it_keeps_releases_nothing():
    adaptive = AdaptiveSize(16, probe_every=8)
    for _ in range(300):  # bigger batches pay: it climbs to 16, and probes 8 now and then
        adaptive.record(adaptive.target, 0.010 + 0.001 * adaptive.target)
        if adaptive.current == 16:
            break
    probed_down = False
    for _ in range(100):
        probed_down |= adaptive.target == 8
        adaptive.record(adaptive.target, 0.010 + 0.001 * adaptive.target)
        assert adaptive.take_release() is None
    assert probed_down and adaptive.current == 16


async def test_the_batcher_tells_its_model_when_bigger_batches_stopped():
    released: list[int] = []
    clock = ManualClock()
    busy = False
    model = Model(clock, cost=lambda n: 0.010 * n * n if busy else 0.010 + 0.001 * n)
    batcher: Batcher[Any] = Batcher(
        model.run, BatchPolicy(max_size=None, size_limit=8), clock=clock, release=released.append
    )
    for i in range(300):
        batcher.submit(Request(f"s{i % 8}", i))
    await settle()
    assert batcher.adaptive is not None and batcher.adaptive.current == 8 and not released
    busy = True  # bigger batches now cost more a frame: it goes back to 1
    for i in range(600):
        batcher.submit(Request(f"s{i % 8}", i))
    await batcher.close()
    assert batcher.adaptive.current == 1 and released and released[-1] == 1


async def run_auto(run: Callable[[list[Request[Any]]], Any], clock: ManualClock) -> Batcher[Any]:
    """200 requests of 8 streams through ``max_size: auto`` (up to 8) and ``run``, to the end."""
    batcher: Batcher[Any] = Batcher(run, BatchPolicy(max_size=None, size_limit=8), clock=clock)
    for i in range(200):
        batcher.submit(Request(f"s{i % 8}", i))
    await batcher.close()
    return batcher


async def test_auto_uses_the_models_own_time_when_the_run_reports_it():
    clock = ManualClock()

    async def run(batch: list[Request[Any]]) -> Sequence[Any]:
        clock.advance(1.0)  # waited for a free thread: not the model's cost
        for request in batch:
            request.model_s = 0.01 * len(batch)  # the model gains nothing from batching
        return [None] * len(batch)

    batcher = await run_auto(run, clock)
    assert batcher.adaptive is not None
    assert batcher.adaptive.cost_s[1] == pytest.approx(0.01)
    assert batcher.adaptive.current == 1


async def test_auto_counts_preparing_done_inside_the_run_as_part_of_a_batch_s_cost():
    clock = ManualClock()

    async def run(batch: list[Request[Any]]) -> Sequence[Any]:
        for request in batch:
            request.model_s = 0.010  # batching would pay for the model alone...
            request.prepare_s = 0.008 * len(batch)  # ...but the frames are prepared one by one
        return [None] * len(batch)

    batcher = await run_auto(run, clock)
    assert batcher.adaptive is not None
    assert batcher.adaptive.cost_s[2] == pytest.approx(0.026)
    assert batcher.mean_model_ms == pytest.approx(10.0)  # the model's own time stays its own


async def test_batcher_with_auto_size_settles_by_measurement():
    batcher, model, _ = make(BatchPolicy(max_size=None, max_delay_ms=5, size_limit=8), cost=lambda n: 0.01 + 0.001 * n)
    futures = [submit(batcher, f"s{i % 8}", i) for i in range(400)]
    await batcher.close()
    assert all(f.done() for f in futures)
    assert batcher.adaptive is not None and batcher.adaptive.current == 8
    assert max(len(b) for b in model.batches) == 8


class GatedBatches:
    """Each batch waits for its own ``release``: batches in flight at once can be counted."""

    def __init__(self) -> None:
        self.started: list[list[Any]] = []
        self.gates: list[asyncio.Future[None]] = []

    async def run(self, batch: list[Request[Any]]) -> Sequence[Any]:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started.append([r.payload for r in batch])
        self.gates.append(gate)
        await gate
        return [f"out:{r.payload}" for r in batch]

    def release(self, index: int) -> None:
        self.gates[index].set_result(None)


async def test_max_concurrent_keeps_that_many_batches_running_and_no_more():
    model = GatedBatches()
    batcher: Batcher[Any] = Batcher(model.run, BatchPolicy(max_size=2, max_concurrent=2), clock=ManualClock())
    futures = [submit(batcher, "a", i) for i in range(6)]
    await settle()
    assert model.started == [[0, 1], [2, 3]]  # the third batch waits for a free place
    model.release(1)  # the second finishes first: its results do not wait for the first's
    await settle()
    assert futures[2].result() == "out:2" and not futures[0].done()
    assert model.started[2] == [4, 5]
    model.release(0)
    model.release(2)
    await batcher.close()
    assert [f.result() for f in futures] == [f"out:{i}" for i in range(6)]


async def test_an_engine_error_fails_the_whole_batch_without_running_each_alone():
    from pipeline.errors import EngineError

    runs: list[int] = []

    async def down(batch: list[Request[Any]]) -> Sequence[Any]:
        runs.append(len(batch))
        raise EngineError("server down")

    batcher: Batcher[Any] = Batcher(down, BatchPolicy(max_size=3), clock=ManualClock())
    futures = [submit(batcher, s, 0) for s in "abc"]
    await settle()
    assert runs == [3]
    assert all(isinstance(f.exception(), EngineError) for f in futures)
    await batcher.close()


def test_concurrent_batches_of_a_stateful_model_are_refused():
    with pytest.raises(ValueError, match="max_concurrent"):
        Batcher(GatedBatches().run, BatchPolicy(max_size=2, max_concurrent=2, one_per_stream=True))
