"""What ``bench/scaleout.py`` measured, the arithmetic it does on it (percentiles, the control
plane's key-value load per worker tick), and the tables it prints."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

API_PER_WORKER_TICK = 3
"""JetStream API requests one worker makes per tick under the formula below: one stream info per
bucket (its direct gets are not API requests the server counts)."""

# --------------------------------------------------------------------------- what is measured


@dataclass
class Outage:
    """One worker stopped (SIGKILL or SIGTERM) and its streams taken over by the others."""

    signal: str
    streams: int
    """How many streams the stopped worker owned."""
    all_s: float
    """From the signal until every one of its streams had a result from another worker."""
    per_stream_s: list[float]
    """The same, stream by stream."""
    claimed_s: list[float] = field(default_factory=list)
    """From the signal until each of its streams' ``owner_changed`` event arrived (the claim: the
    rest of ``per_stream_s`` is the new owner starting the stream and publishing its first result)."""
    reasons: Counter[str] = field(default_factory=Counter)
    """``owner_changed`` reasons of the moves that followed."""
    bystanders: int = 0
    """Moves of streams the stopped worker did not own (there should be none)."""
    exit_code: int | None = None
    exit_s: float | None = None
    """SIGTERM: from the signal until the process exited."""


@dataclass
class Join:
    """One worker started into a running cluster and the moves it caused."""

    kind: str
    """``extra`` (N -> N+1) or ``restart`` (N-1 -> N after a stop)."""
    workers: int
    """Live workers after the join."""
    moved: int
    """Streams that changed owner."""
    ideal: int
    """The fewest moves that balance the cluster: the new worker's fair share, floor(M / workers)."""
    to_new: int
    """Moves onto the new worker."""
    twice: list[str]
    """Streams that moved more than once."""
    reasons: Counter[str]
    settle_s: float
    """From the worker answering ``/healthz`` until the cluster was balanced and every stream had
    results from its new owner."""


@dataclass
class KvRates:
    """The key-value buckets' sequence numbers and the account's API count before and after a
    quiet window: what the cluster wrote, and what the server counted."""

    window_s: float
    workers: int
    streams: int
    tick_s: float
    writes: dict[str, int]
    """Bucket -> writes in the window (its stream's ``last_seq`` delta: with ``history: 1`` the
    message count stays flat, every write still takes a sequence number)."""
    record_bytes: dict[str, float]
    """Bucket -> mean stored record (subject, headers, value), bytes."""
    api_requests: int
    """JetStream API requests the server counted in the window, the bench's own ~7 included."""
    consumers: dict[str, int]
    """Bucket -> consumers on its stream at the end of the window."""
    moves: int
    """``owner_changed`` events in the window (0: it was quiet)."""

    @property
    def period_s(self) -> float:
        """A worker's effective tick: every worker renews each lease it holds once per tick, so
        the owners bucket takes ``streams`` writes per tick (the tick plus the step's own time)."""
        owners = next(n for b, n in self.writes.items() if b.endswith("-owners"))
        return self.streams * self.window_s / owners if owners else math.nan

    @property
    def writes_per_s(self) -> float:
        return sum(self.writes.values()) / self.window_s

    @property
    def write_bytes_per_s(self) -> float:
        return sum(self.writes[b] * self.record_bytes.get(b, 0.0) for b in self.writes) / self.window_s

    @property
    def worker_ticks(self) -> float:
        return self.workers * self.window_s / self.period_s

    @property
    def reads_per_s(self) -> float:
        return kv_load(self.workers, self.streams, self.period_s, self.streams).reads_per_s


@dataclass(frozen=True)
class KvLoad:
    """The control plane's key-value operations per second, from the worker's algorithm
    (``pipeline/cluster/worker.py``, ``store.py``): every tick each of W workers puts its heartbeat
    (1 write), renews each lease it holds (S writes over all workers) and checkpoints each file
    stream that moved on (F writes: the bench's streams are all looping files; cameras have none),
    lists the keys of the catalog, the owners and the workers (3 listings: a stream info with a
    subjects filter each) and gets every key it listed (S + S + W gets)."""

    workers: int
    streams: int
    period_s: float
    file_streams: int = 0

    @property
    def writes_per_s(self) -> float:
        return (self.workers + self.streams + self.file_streams) / self.period_s

    @property
    def gets_per_s(self) -> float:
        return self.workers * (2 * self.streams + self.workers) / self.period_s

    @property
    def listings_per_s(self) -> float:
        """Stream-info requests (JetStream API requests) that list a bucket's keys."""
        return self.workers * API_PER_WORKER_TICK / self.period_s

    @property
    def reads_per_s(self) -> float:
        """gets + listings."""
        return self.gets_per_s + self.listings_per_s

    @property
    def listed_keys_per_s(self) -> float:
        """Keys the listings return (one subject each in the stream infos' answers)."""
        return self.gets_per_s

    @property
    def gets_per_step(self) -> int:
        """Gets one worker makes in one step, one after another."""
        return 2 * self.streams + self.workers


def kv_load(workers: int, streams: int, period_s: float, file_streams: int = 0) -> KvLoad:
    return KvLoad(workers, streams, period_s, file_streams)


# --------------------------------------------------------------------------- arithmetic


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile, interpolated between the closest ranks (as numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: Sequence[float]) -> list[str]:
    """n, p50, p99, max."""
    if not values:
        return ["0", "-", "-", "-"]
    return [str(len(values)), f"{percentile(values, 50):.2f}", f"{percentile(values, 99):.2f}", f"{max(values):.2f}"]


# --------------------------------------------------------------------------- printing


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, markdown: bool) -> None:
    if not rows:
        print("(none)\n", flush=True)
        return
    if markdown:
        print("| " + " | ".join(headers) + " |")
        print("| " + " | ".join("---" if i == 0 else "---:" for i in range(len(headers))) + " |")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) for i in range(len(headers))]
        print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
        for row in rows:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print(flush=True)


def reasons_text(reasons: Counter[str]) -> str:
    return " ".join(f"{r}:{n}" for r, n in sorted(reasons.items())) or "-"


def claims_text(claimed: Sequence[float]) -> str:
    return f"{min(claimed):.2f}-{max(claimed):.2f}" if claimed else "-"


def exits_text(outages: Sequence[Outage]) -> str:
    """SIGTERM: how long each stopped worker took to exit, and its exit codes."""
    exits = [o.exit_s for o in outages if o.exit_s is not None]
    if not exits:
        return "-"
    codes = sorted({str(o.exit_code) for o in outages})
    return f"{'/'.join(f'{s:.1f}' for s in exits)}, {','.join(codes)}"


def print_outages(by_lease: dict[float, list[Outage]], *, markdown: bool) -> None:
    rows = []
    for lease_s, outages in by_lease.items():
        for name in ("SIGKILL", "SIGTERM"):
            chosen = [o for o in outages if o.signal == name]
            if not chosen:
                continue
            what = "failover" if name == "SIGKILL" else "handoff"
            reasons = sum((o.reasons for o in chosen), Counter())
            rows.append(
                [
                    f"{lease_s:g}",
                    f"{what} ({name}), all its streams",
                    *spread([o.all_s for o in chosen]),
                    claims_text([c for o in chosen for c in o.claimed_s]),
                    reasons_text(reasons),
                    str(sum(o.bystanders for o in chosen)),
                    exits_text(chosen),
                ]
            )
            rows.append(
                [
                    f"{lease_s:g}",
                    f"{what} ({name}), per stream",
                    *spread([s for o in chosen for s in o.per_stream_s]),
                    "",
                    "",
                    "",
                    "",
                ]
            )
    print_table(
        [
            "lease_s",
            "seconds from the signal to results from another worker",
            "n",
            "p50",
            "p99",
            "max",
            "claimed s (min-max)",
            "reasons",
            "bystanders moved",
            "worker exited (s, code)",
        ],
        rows,
        markdown=markdown,
    )


def print_joins(by_lease: dict[float, list[Join]], *, markdown: bool) -> None:
    rows = []
    for lease_s, joins in by_lease.items():
        for kind in ("extra", "restart"):
            chosen = [j for j in joins if j.kind == kind]
            if not chosen:
                continue
            workers = sorted({j.workers for j in chosen})
            rows.append(
                [
                    f"{lease_s:g}",
                    f"{kind} worker x{len(chosen)}",
                    "/".join(str(w) for w in workers),
                    str(sum(j.moved for j in chosen)),
                    str(sum(j.ideal for j in chosen)),
                    str(sum(j.to_new for j in chosen)),
                    str(sum(len(j.twice) for j in chosen)),
                    reasons_text(sum((j.reasons for j in chosen), Counter())),
                    "/".join(f"{j.settle_s:.1f}" for j in chosen),
                ]
            )
    print_table(
        ["lease_s", "join", "workers after", "moved", "ideal", "to the new one", "moved twice", "reasons", "settled s"],
        rows,
        markdown=markdown,
    )


def print_kv(by_lease: dict[float, KvRates], *, markdown: bool) -> None:
    rows = []
    for lease_s, kv in by_lease.items():
        formula = kv_load(kv.workers, kv.streams, kv.period_s, kv.streams)
        writes = " ".join(f"{b.rsplit('-', 1)[-1]}:{n / kv.window_s:.1f}" for b, n in kv.writes.items())
        rows.append(
            [
                f"{lease_s:g}",
                f"{kv.tick_s:g}/{kv.period_s:.2f}",
                f"{kv.window_s:.0f}",
                writes,
                f"{kv.writes_per_s:.1f} ({formula.writes_per_s:.1f})",
                f"{kv.writes_per_s / kv.streams:.2f}",
                f"{kv.write_bytes_per_s / 1024:.1f}",
                f"{kv.reads_per_s:.0f}",
                f"{kv.reads_per_s / kv.streams:.1f}",
                f"{kv.api_requests / kv.window_s:.1f} ({kv.api_requests / kv.worker_ticks:.1f})",
                "/".join(str(n) for n in kv.consumers.values()),
                str(kv.moves),
            ]
        )
    print_table(
        [
            "lease_s",
            "tick s (set/measured)",
            "window s",
            "writes/s by bucket",
            "writes/s (formula)",
            "writes/s/stream",
            "write KiB/s",
            "reads/s est.",
            "reads/s/stream est.",
            "JS API req/s (per worker tick)",
            "consumers catalog/workers/owners/progress",
            "moves",
        ],
        rows,
        markdown=markdown,
    )


def print_estimate(by_lease: dict[float, KvRates], workers: int, streams: int, *, markdown: bool) -> None:
    """The formula at ``streams`` on ``workers``, with each lease's measured effective tick."""
    rows = []
    for lease_s, kv in by_lease.items():
        load = kv_load(workers, streams, kv.period_s)
        rows.append(
            [
                f"{lease_s:g}",
                f"{kv.period_s:.2f}",
                f"{load.writes_per_s:,.0f}",
                f"{load.writes_per_s / streams:.2f}",
                f"{load.gets_per_s:,.0f}",
                f"{load.listings_per_s:,.0f}",
                f"{load.reads_per_s / streams:,.1f}",
                f"{load.listed_keys_per_s:,.0f}",
                f"{load.gets_per_step:,}",
            ]
        )
    print(f"the same algorithm at {streams} cameras (live streams: no checkpoints) on {workers} workers:")
    print_table(
        [
            "lease_s",
            "tick s",
            "writes/s",
            "writes/s/stream",
            "gets/s",
            "listings/s (stream info)",
            "reads/s/stream",
            "keys listed/s",
            "gets per worker step (sequential)",
        ],
        rows,
        markdown=markdown,
    )
