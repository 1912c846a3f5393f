"""SourceThread: a stream's blocking calls on a thread of its own, each with a time limit; and the
shared pool's stall watch (``WatchedPool``) that ``/readyz`` reports."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pipeline import sourcethread
from pipeline.sourcethread import SourceStuck, SourceThread
from pipeline.threadpool import WatchedPool


async def test_a_call_runs_on_the_streams_own_thread_and_returns_its_value() -> None:
    io = SourceThread("cam")
    names = [await io.call(lambda: threading.current_thread().name, what="x", timeout=5) for _ in range(2)]
    io.close()
    assert names[0] == names[1]  # one thread per stream, reused call after call
    assert names[0].startswith("source:cam:") and names[0] != threading.current_thread().name


async def test_an_exception_in_the_call_reaches_the_caller() -> None:
    io = SourceThread("cam")

    def broken() -> None:
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output error"):
        await io.call(broken, what="a read", timeout=5)
    io.close()


async def test_a_call_past_its_timeout_is_abandoned_and_cleaned_up_when_it_returns() -> None:
    io = SourceThread("fifo")
    release = threading.Event()
    cleaned: list[object] = []
    abandoned_before = sourcethread.abandoned_total()

    with pytest.raises(SourceStuck) as raised:
        await io.call(release.wait, what="the open", timeout=0.2, late=cleaned.append)
    assert raised.value.stopping is False
    assert str(raised.value).startswith("the open: no answer after 0.")
    assert "its thread is abandoned" in str(raised.value)
    assert sourcethread.abandoned_total() == abandoned_before + 1
    assert sourcethread.stuck_now() >= 1

    # The next call gets a fresh thread: the stuck one does not hold it up.
    assert await io.call(lambda: 7, what="x", timeout=5) == 7

    release.set()  # the blocked call returns at last: its result goes to the clean-up
    for _ in range(100):
        if cleaned:
            break
        await asyncio.sleep(0.02)
    assert cleaned == [True]
    io.close()


async def test_a_stop_gives_a_blocked_call_only_its_grace() -> None:
    io = SourceThread("fifo")
    release = threading.Event()
    halt = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, halt.set)
    with pytest.raises(SourceStuck) as raised:
        await io.call(release.wait, what="the open", timeout=None, halt=halt, grace_s=0.1)
    assert raised.value.stopping is True
    assert "still blocked past the stop's grace" in str(raised.value)
    release.set()
    io.close()


async def test_a_call_that_returns_within_the_grace_of_a_stop_still_returns() -> None:
    io = SourceThread("cam")
    halt = asyncio.Event()
    halt.set()
    assert await io.call(lambda: "done", what="x", timeout=None, halt=halt, grace_s=5) == "done"
    io.close()


def test_the_pool_is_stalled_only_when_every_thread_is_busy_past_stall_s() -> None:
    pool = WatchedPool(2)
    release = threading.Event()
    try:
        assert pool.stalled(0.0) is None
        first = pool.submit(release.wait)
        assert pool.stalled(0.0) is None  # one thread still free
        second = pool.submit(release.wait)
        for _ in range(200):
            if pool.busy == 2:
                break
            threading.Event().wait(0.01)
        assert pool.busy == 2
        assert pool.stalled(3600.0) is None  # busy, not yet for long
        why = pool.stalled(0.0)
        assert why is not None
        assert why.startswith("every thread of the shared pool (runtime.threads: 2) busy for")
        assert "Event.wait" in why  # names the call that holds a thread
        release.set()
        first.result(5)
        second.result(5)
        assert pool.stalled(0.0) is None and pool.busy == 0
    finally:
        release.set()
        pool.shutdown()
