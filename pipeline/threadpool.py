"""The shared thread pool (``runtime.threads``), watched: which calls run in it, since when.

Decoding, model runs and other blocking work share this pool; a source's I/O has threads of its own
(``pipeline.sourcethread``). When every thread of the pool has been busy for ``stall_s`` with no
call finishing, the pipeline is stalled: nothing else can run until one returns. ``stalled``
says so, naming the longest call, and ``/readyz`` reports it (a stalled pipeline is not ready).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class WatchedPool(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` that knows what each busy thread runs."""

    def __init__(self, threads: int) -> None:
        super().__init__(threads, thread_name_prefix="streamgraph")
        self.size = threads
        self._lock = threading.Lock()
        self._running: dict[int, tuple[float, str]] = {}
        """Call ticket -> (monotonic start, what runs)."""
        self._tickets = itertools.count()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        ticket = next(self._tickets)
        label = getattr(fn, "__qualname__", None) or type(fn).__name__

        def watched() -> T:
            with self._lock:
                self._running[ticket] = (time.monotonic(), label)
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    del self._running[ticket]

        return super().submit(watched)

    @property
    def busy(self) -> int:
        """Threads running a call now."""
        with self._lock:
            return len(self._running)

    def stalled(self, stall_s: float) -> str | None:
        """Why the pool counts as stalled (every thread busy for ``stall_s`` and more), or None."""
        with self._lock:
            running = list(self._running.values())
        if len(running) < self.size:
            return None
        now = time.monotonic()
        full_since = max(started for started, _ in running)  # the last free thread took a call then
        if now - full_since < stall_s:
            return None
        started, label = min(running)
        return (
            f"every thread of the shared pool (runtime.threads: {self.size}) busy for {now - full_since:.0f} s; "
            f"the longest call, {label}, for {now - started:.0f} s"
        )
