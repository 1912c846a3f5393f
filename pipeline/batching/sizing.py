"""``max_size: auto``: the batch size policy, from measured run times."""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping, Sequence


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

PROBE_BACKOFF = 4
"""How many times ``probe_every`` the wait between probes grows to while probes change nothing."""

RECENT_RUN_TIMES = 20
"""Runs of a batch size whose 90th percentile the deadline check expects a run to take."""


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank: of 2 or 3 runs, the slowest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class AdaptiveSize:
    """Chooses a batch size from measured run times: most items per second within the budget.

    Sizes are powers of two up to ``limit``. The cost of each size is the median of its last
    five run times, once it has three (one run is not evidence on a shared machine), or at once
    when a size still being measured runs over the budget; the first run of each size is left
    out (a new batch shape warms up the engine, and the first runs happen while the pipeline is
    still starting). A bigger size must give ``margin`` more items per second than a smaller one,
    plus the noise of the two costs (``_spread``), and win against the smaller one measured
    after it (``_best``) to be chosen: bigger batches cost latency and memory, so a gain within
    measurement noise, or one a fading load made up, is not worth it. Costs measured long ago
    stop counting (``_fresh``). After ``probe_every`` batches (twice that after a probe that
    changed nothing, and so on up to ``PROBE_BACKOFF`` times: a probe of a worse size costs
    throughput, and a settled choice needs fewer) the next size up (or down) runs up to
    ``PROBE_RUNS`` batches in a row (a shorter batch, or a run over the budget, ends the probe), so the choice
    follows the load and the machine: a completed probe's three fresh runs of five decide the
    size's median, where a single run left it to runs made under another load. A size the
    batcher keeps falling short of (fewer requests waiting than it holds) is out of reach, and
    that verdict, like a size ruled out over the budget, is reconsidered after
    ``VERDICT_PROBES`` probe periods.

    Bigger batches take more of the model's working memory, which engines keep once taken (ONNX
    Runtime's arena, OpenVINO's buffers): a batch of 8 frames can leave hundreds of MB behind.
    So when sizes more than one step above the one it settles on ran (a climb was not worth it,
    the load fell), ``take_release`` says so once, and the engine can give their memory back; the
    memory of one step up stays held, as the next probe up needs it again.
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
        self._probe_interval = probe_every
        self._probe_up = True
        self._probe_left = 0
        self._records = 0
        self._measured_at: dict[int, int] = {}
        """When (in records) each size's cost was last updated."""
        self._out_of_reach: dict[int, int] = {}
        """Sizes the batcher could not fill (fewer requests waiting), and when that was found."""
        self._short_runs = 0
        self._confirmed = 1
        """The best size by measurement, once confirmed against the smaller one measured after it."""
        self._peak = 0
        """The biggest ladder size run since memory was last released."""
        self._release_to: int | None = None

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
        if size in self.sizes:
            self._peak = max(self._peak, size)
        self._note_short_run(size)
        self._forget_old_verdicts()
        if self._probe_left > 1 and size == self._target and self._fits(size):
            self._probe_left -= 1  # the probe goes on (not past a run over the budget)
            return
        probed, before = self._target != self.current, self.current
        self._probe_left = 0
        self.current, confirm = self._best()
        if confirm:  # run the smaller size a few times in a row, then decide again
            self._target = self.current
            self._probe_left = PROBE_RUNS
            return
        if self.current != before:
            self._probe_interval = self.probe_every
        elif probed:
            self._probe_interval = min(2 * self._probe_interval, PROBE_BACKOFF * self.probe_every)
        self._since_probe += 1
        self._target = self.current
        # No probe while the current size is still being measured (climbing to an untried one).
        if self._since_probe >= self._probe_interval and self.current in self.cost_s:
            self._since_probe = 0
            self._target = self._neighbour()
            self._probe_left = PROBE_RUNS if self._target != self.current else 0
        # More than one size up ran: its memory goes. A probe's size (one up) stays held: releasing
        # after every probe made the next take its memory from the system again (10-15% fewer
        # frames/s in bench/batching.py).
        if 2 * self.current < self._peak:
            self._release_to = self.current
            self._peak = self.current

    def take_release(self) -> int | None:
        """The batch size that runs from now on, once after bigger ones ran (their working memory
        can go), else None."""
        release, self._release_to = self._release_to, None
        return release

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

    def _fresh(self, size: int) -> bool:
        """Whether a size's cost may be compared: the current size's, or one measured lately (a
        cost measured under another load, while the pipeline was starting, would decide now)."""
        # Three of the longest waits between probes: a neighbouring size is measured again in time.
        horizon = 3 * PROBE_BACKOFF * self.probe_every
        return size == self.current or self._records - self._measured_at.get(size, 0) <= horizon

    def _spread(self, size: int) -> float:
        """How far a size's recent runs stray from their median (half their range, relative): a
        gain smaller than the noise of the two costs compared is no gain. Small where runs are
        steady (a GPU), a good part of the cost on a CPU shared with decoding."""
        recent = self._recent.get(size)
        if not recent or len(recent) < MIN_RUNS:
            return 0.0
        return (max(recent) - min(recent)) / (2.0 * statistics.median(recent))

    def _best(self) -> tuple[int, bool]:
        """The size to run: the most items per second by the costs measured lately (a bigger size
        by ``margin``), or the next size up while the biggest measured wins and it was not tried;
        and whether it is a smaller size to run again first (True): a bigger size wins only
        against a smaller one measured after it, so a load that fades (decoders bursting as
        streams start, then settling) cannot make each bigger size look cheaper for coming later."""
        measured = [s for s in self.sizes if s in self.cost_s and self._fits(s) and self._fresh(s)]
        if not measured:
            return 1, False
        best = measured[0]
        for size in measured[1:]:
            needed = 1 + self.margin + self._spread(size) + self._spread(best)
            if size / self.cost_s[size] > needed * best / self.cost_s[best]:
                best = size
        smaller = [s for s in measured if s < best]
        if best != self._confirmed and smaller and self._measured_at[smaller[-1]] < self._measured_at[best]:
            return smaller[-1], True
        self._confirmed = best
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
            return following[0], False
        return best, False

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
