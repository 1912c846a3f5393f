"""Triton's system shared memory, for a server on this host: inputs go by reference, not in the body.

A request's inputs are written into a POSIX shared memory region Triton has registered (through
its ``/v2/systemsharedmemory`` extension), and the request names the region, offset and size
instead of carrying the bytes: no HTTP body of tens of megabytes to write, send, receive and
parse on a machine whose cores the client and the server share. Outputs still come back in the
answer (they are a fraction of the inputs for the models this serves).

One region per request in flight: a request holds its region from the copy in until the answer
is back. A region grows (registered again) when a batch needs more. A server that restarted has
forgotten its regions: a request it refuses for that registers them again and is sent once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from dataclasses import dataclass
from multiprocessing import shared_memory

import numpy as np

from .dtypes import v2_datatype
from .http import HttpSession
from .transport import Rejected

EXTENSION = "system_shared_memory"
FIRST_SIZE = 1 << 20
"""Bytes a region starts with; it grows to what a batch needs."""

_names = itertools.count()


@dataclass
class Region:
    name: str
    """The name Triton knows it by (also the POSIX name, without the leading slash)."""
    memory: shared_memory.SharedMemory

    @property
    def size(self) -> int:
        return self.memory.size


class SharedMemoryInputs:
    """The regions of one transport; ``slots`` requests at once."""

    def __init__(self, http: HttpSession, slots: int) -> None:
        self._http = http
        self._slots = slots
        self._free: asyncio.Queue[Region] = asyncio.Queue()
        self._regions: list[Region] = []

    async def open(self) -> None:
        """Make and register every region: a server that cannot open this host's memory (it runs
        elsewhere) says so now, as a ``Rejected``."""
        for _ in range(self._slots):
            region = self._create(FIRST_SIZE)
            self._regions.append(region)
            await self._register(region)
            self._free.put_nowait(region)

    async def close(self) -> None:
        for region in self._regions:
            with contextlib.suppress(Exception):  # the server may be gone; the memory is ours to free anyway
                await self._unregister(region)
            _free_memory(region)
        self._regions.clear()

    async def write(self, feeds: dict[str, np.ndarray]) -> tuple[Region, list[dict[str, object]]]:
        """A free region holding ``feeds`` (grown if need be), and the request's input entries
        that point into it. The caller gives the region back with ``release``."""
        region = await self._free.get()
        try:
            needed = sum(array.nbytes for array in feeds.values())
            if needed > region.size:
                region = await self._grow(region, needed)
            entries = await asyncio.to_thread(_copy_in, region, feeds)
        except BaseException:
            self._free.put_nowait(region)
            raise
        return region, entries

    def release(self, region: Region) -> None:
        self._free.put_nowait(region)

    async def register_again(self, region: Region) -> None:
        """After a refusal that names shared memory (the server restarted and forgot it)."""
        await self._register(region)

    async def _grow(self, region: Region, needed: int) -> Region:
        await self._unregister(region)
        _free_memory(region)
        bigger = self._create(max(needed, region.size * 3 // 2))
        self._regions[self._regions.index(region)] = bigger
        await self._register(bigger)
        return bigger

    def _create(self, size: int) -> Region:
        name = f"streamgraph_{os.getpid()}_{next(_names)}"
        return Region(name, shared_memory.SharedMemory(name=name, create=True, size=size))

    async def _register(self, region: Region) -> None:
        body = json.dumps({"key": f"/{region.name}", "offset": 0, "byte_size": region.size}).encode()
        try:
            await self._http.post(
                f"/v2/systemsharedmemory/region/{region.name}/register", body, content_type="application/json"
            )
        except Rejected as exc:
            if "already" in str(exc).lower():  # registered before (a retry): nothing to do
                return
            raise Rejected(f"cannot register shared memory (is the server on this host?): {exc}") from None

    async def _unregister(self, region: Region) -> None:
        await self._http.post(
            f"/v2/systemsharedmemory/region/{region.name}/unregister", b"", content_type="application/json"
        )


def _copy_in(region: Region, feeds: dict[str, np.ndarray]) -> list[dict[str, object]]:
    """Each input into the region, one after another, and the request's entry for each."""
    entries: list[dict[str, object]] = []
    offset = 0
    for name, array in feeds.items():
        view = np.ndarray(array.shape, dtype=array.dtype, buffer=region.memory.buf, offset=offset)
        view[...] = array
        entries.append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": v2_datatype(array),
                "parameters": {
                    "shared_memory_region": region.name,
                    "shared_memory_byte_size": array.nbytes,
                    "shared_memory_offset": offset,
                },
            }
        )
        offset += array.nbytes
    return entries


def _free_memory(region: Region) -> None:
    region.memory.close()
    with contextlib.suppress(FileNotFoundError):
        region.memory.unlink()
