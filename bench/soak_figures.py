"""What ``bench/soak.py`` samples from its own process (memory, fds, tasks, threads), how it
judges their growth, and the tables it prints them in."""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.runner import Runner


@dataclass(frozen=True)
class Sample:
    at_s: float
    """Seconds since the streams first published."""
    rss_mib: float
    fds: int
    tasks: int
    threads: int
    streams_kept: int
    """Streams whose counters the runtime holds (``StreamStats``)."""
    results: int
    """Results received so far, every stream."""
    churned: int
    """Streams added through the API so far."""


FIGURES: dict[str, str] = {"rss_mib": "RSS MiB", "fds": "open fds", "tasks": "asyncio tasks", "threads": "threads"}
"""The figures judged for growth, and their labels."""


def process_status() -> tuple[float, int]:
    """This process's resident memory (MiB) and OS thread count, from ``/proc/self/status``."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024.0, int(fields["Threads"])


def take_sample(at_s: float, runner: Runner, results: int, churned: int) -> Sample:
    rss_mib, threads = process_status()
    return Sample(
        at_s=at_s,
        rss_mib=rss_mib,
        fds=len(os.listdir("/proc/self/fd")),
        tasks=len(asyncio.all_tasks()),
        threads=threads,
        streams_kept=len(runner.stats.items()),
        results=results,
        churned=churned,
    )


@dataclass(frozen=True)
class Growth:
    label: str
    before: float
    after: float

    @property
    def percent(self) -> float:
        return (self.after - self.before) / self.before * 100.0 if self.before else 0.0


def growths(samples: Sequence[Sample], duration_s: float) -> tuple[list[Growth], int, int]:
    """Each figure's median over the middle third of the run against its median over the last
    third, and how many samples each third had."""
    middle = [s for s in samples if duration_s / 3 <= s.at_s < 2 * duration_s / 3]
    last = [s for s in samples if s.at_s >= 2 * duration_s / 3]
    if not middle or not last:
        return [], len(middle), len(last)
    return (
        [
            Growth(
                label,
                statistics.median(getattr(s, key) for s in middle),
                statistics.median(getattr(s, key) for s in last),
            )
            for key, label in FIGURES.items()
        ],
        len(middle),
        len(last),
    )


# --------------------------------------------------------------------------- printing


COLUMNS = ("min", "RSS MiB", "open fds", "asyncio tasks", "threads", "streams kept", "results/s", "churned")


def row_cells(samples: Sequence[Sample], index: int) -> list[str]:
    sample = samples[index]
    earlier = next((s for s in reversed(samples[:index]) if s.at_s <= sample.at_s - 55.0), samples[0])
    span = sample.at_s - earlier.at_s
    rate = f"{(sample.results - earlier.results) / span:.1f}" if span > 0 else "-"
    return [
        f"{sample.at_s / 60:.1f}",
        f"{sample.rss_mib:.1f}",
        str(sample.fds),
        str(sample.tasks),
        str(sample.threads),
        str(sample.streams_kept),
        rate,
        str(sample.churned),
    ]


def print_row(samples: Sequence[Sample]) -> None:
    if len(samples) == 1:
        print("  ".join(f"{c:>13}" for c in COLUMNS), flush=True)
    print("  ".join(f"{c:>13}" for c in row_cells(samples, len(samples) - 1)), flush=True)


def minute_rows(samples: Sequence[Sample]) -> list[int]:
    """The indexes of the samples printed: the first of each minute, and the last."""
    indexes: dict[int, int] = {}
    for index, sample in enumerate(samples):
        indexes.setdefault(int(sample.at_s // 60), index)
    return sorted({*indexes.values(), len(samples) - 1})


def print_markdown(samples: Sequence[Sample], found: list[Growth]) -> None:
    print("\n| " + " | ".join(COLUMNS) + " |")
    print("|" + " ---: |" * len(COLUMNS))
    for index in minute_rows(samples):
        print("| " + " | ".join(row_cells(samples, index)) + " |")
    if found:
        print("\n| figure | middle third | last third | growth |\n| --- | ---: | ---: | ---: |")
        for g in found:
            print(f"| {g.label} | {g.before:.1f} | {g.after:.1f} | {g.percent:+.1f}% |")
    print()
