"""A thread of its own for each stream's blocking I/O, and a time limit on every call it makes.

A source's opens and reads block for as long as whatever is behind them likes: a named pipe with
no writer, a hung network mount, a server that accepts TCP and never answers. In the shared thread
pool (``runtime.threads``) a few such calls would hold every thread and stall every other stream.
So each stream's source does its I/O on a ``SourceThread``, and waits for a call at most its
timeout, or a short grace once the stream is asked to stop. A call that does not return in time is
abandoned with its thread: the caller gets ``SourceStuck`` (the stream fails, naming the call),
the next call gets a fresh thread, and the abandoned one, a daemon that never holds up the
process's exit, ends once the call returns by itself, if it ever does, after handing what it
returned to the caller's ``late`` clean-up (closing a container opened too late, say).

Abandoned threads are counted for ``/metrics``: ``abandoned_total()``, and ``stuck_now()``, those
still blocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

STOP_GRACE_S = 2.0
"""How long a call may still take once its stream is asked to stop."""

_lock = threading.Lock()
_stuck: set[threading.Thread] = set()
_abandoned_total = 0
_numbers = itertools.count(1)


def abandoned_total() -> int:
    """Source threads abandoned in a blocked call since the process started."""
    return _abandoned_total


def stuck_now() -> int:
    """Abandoned source threads whose call has not returned yet."""
    with _lock:
        return len(_stuck)


class SourceStuck(Exception):
    """A source's blocking call did not return in time; its thread was abandoned."""

    def __init__(self, what: str, seconds: float, *, stopping: bool) -> None:
        self.what = what
        self.seconds = seconds
        self.stopping = stopping
        why = "still blocked past the stop's grace" if stopping else "no answer"
        super().__init__(f"{what}: {why} after {seconds:.1f} s; its thread is abandoned")


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    late: Callable[[Any], None] | None


class _Worker:
    """One daemon thread running jobs in order until told to end, or abandoned."""

    def __init__(self, name: str) -> None:
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.abandoned = False
        self.thread = threading.Thread(target=self._work, name=name, daemon=True)
        self.thread.start()

    def _work(self) -> None:
        try:
            while (job := self.jobs.get()) is not None:
                try:
                    outcome: tuple[Any, BaseException | None] = (job.fn(*job.args), None)
                except BaseException as exc:  # handed to the caller, whatever it is
                    outcome = (None, exc)
                if self.abandoned:
                    _clean_up_late(job, outcome)
                    return
                try:
                    job.loop.call_soon_threadsafe(_settle, job.future, outcome)
                except RuntimeError:  # the loop has closed: nobody waits any more
                    return
        finally:
            with _lock:
                _stuck.discard(self.thread)


def _clean_up_late(job: _Job, outcome: tuple[Any, BaseException | None]) -> None:
    """What an abandoned call returned goes to its clean-up (nobody else waits for it): its
    result, or None if it raised."""
    result, _ = outcome
    if job.late is not None:
        with contextlib.suppress(Exception):
            job.late(result)


def _settle(future: asyncio.Future[Any], outcome: tuple[Any, BaseException | None]) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    result, error = outcome
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class SourceThread:
    """Where one stream's blocking calls run, one at a time, each with a time limit."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._worker: _Worker | None = None

    async def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        what: str,
        timeout: float | None,
        halt: asyncio.Event | None = None,
        grace_s: float = STOP_GRACE_S,
        late: Callable[[T | None], None] | None = None,
    ) -> T:
        """``fn(*args)`` on this stream's thread. Raises ``SourceStuck`` (naming ``what``) when it
        takes longer than ``timeout``, or than ``grace_s`` once ``halt`` is set; the call is then
        abandoned, and ``late`` gets its result (None if it raised) if it ever returns."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        worker = self._current_worker()
        worker.jobs.put(_Job(fn, args, future, loop, late))
        started = time.monotonic()
        deadline = started + timeout if timeout is not None else None
        halted = asyncio.ensure_future(halt.wait()) if halt is not None else None
        try:
            while not future.done():
                if halt is not None and halt.is_set():
                    grace_end = time.monotonic() + grace_s
                    deadline = grace_end if deadline is None else min(deadline, grace_end)
                    halted = None
                waiting: set[asyncio.Future[Any]] = {future} if halted is None else {future, halted}
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if not future.done() and deadline is not None and time.monotonic() >= deadline:
                    self._abandon(worker)
                    stopping = halt is not None and halt.is_set()
                    raise SourceStuck(what, time.monotonic() - started, stopping=stopping)
        finally:
            if halted is not None:
                halted.cancel()
        return future.result()

    def close(self) -> None:
        """The thread ends once its last call returns (an abandoned one is left as it is)."""
        if self._worker is not None and not self._worker.abandoned:
            self._worker.jobs.put(None)
        self._worker = None

    def _current_worker(self) -> _Worker:
        if self._worker is None:
            self._worker = _Worker(f"source:{self.name}:{next(_numbers)}")
        return self._worker

    def _abandon(self, worker: _Worker) -> None:
        global _abandoned_total
        worker.abandoned = True
        worker.jobs.put(None)  # should it come back: nothing else is queued for it
        with _lock:
            _abandoned_total += 1
            if worker.thread.is_alive():
                _stuck.add(worker.thread)
        self._worker = None
