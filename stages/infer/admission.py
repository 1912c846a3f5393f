"""How many items of streams that are not live ``infer`` works on at once, with ``max_size: auto``.

The stage may hold enough items to fill a batch of ``size_limit`` while another runs (its
``max_in_flight``, 32 by default), and a file read at ``rate: max`` fills that at once. With
``auto`` settled on batch 1 that is 31 frames prepared ahead, each waiting up to 31 runs (1.5 s
of ``batch_wait`` in bench/batching.py against 0.05 s with ``max_size: 1``) and holding its
tensor (2.9 MB a text-detector frame). So such items wait here, before they are prepared, until
fewer than enough for the batch size now chosen are in: a batch running and the next one
filling, as with a fixed ``max_size``. Live streams keep one frame waiting in the batcher anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager


class Admission:
    """Lets at most ``limit()`` holders in at once; the limit may change between calls."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._inside = 0
        self._room = asyncio.Event()

    @property
    def inside(self) -> int:
        return self._inside

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        while self._inside >= max(1, self._limit()):
            self._room.clear()
            await self._room.wait()
        self._inside += 1
        try:
            yield
        finally:
            self._inside -= 1
            self._room.set()
