"""``jsonl``: one JSON message per line, to a file (rotated by size) or to stdout.

Writes run in a thread (a full disk or a stdout pipe nobody reads blocks there, not the event
loop); each batch is written and flushed at once, so a reader never sees half a line from us.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import IO

from .base import Sink, SinkDown, SinkMessage

STDOUT = "-"


class JsonlSink(Sink):
    kind = "jsonl"

    def __init__(self, name: str, path: str, *, max_pending: int, max_bytes: int | None = None, keep: int = 5) -> None:
        super().__init__(name, max_pending=max_pending, max_batch=256)
        self.path = None if path == STDOUT else Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._file: IO[bytes] | None = None

    @property
    def where(self) -> str:
        return "stdout" if self.path is None else str(self.path)

    async def connect(self) -> None:
        if self.path is not None:
            await asyncio.to_thread(self._open)

    async def disconnect(self) -> None:
        if self._file is not None and self.path is not None:
            file, self._file = self._file, None
            await asyncio.to_thread(file.close)

    async def deliver(self, batch: list[SinkMessage]) -> None:
        data = b"".join(message.payload + b"\n" for message in batch)
        try:
            await asyncio.to_thread(self._write, data)
        except OSError as exc:
            raise SinkDown(f"writing {self.where}: {exc}") from exc

    def _open(self) -> None:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("ab")

    def _write(self, data: bytes) -> None:
        if self.path is None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return
        if self._file is None:
            self._open()  # after a failed write, or a rotation that could not reopen
        assert self._file is not None
        if self.max_bytes is not None and self._file.tell() > 0 and self._file.tell() + len(data) > self.max_bytes:
            self._rotate()
            assert self._file is not None
        self._file.write(data)
        self._file.flush()

    def _rotate(self) -> None:
        """``x`` -> ``x.1`` -> ``x.2`` ... keeping ``keep`` old files, then a new ``x``."""
        assert self.path is not None and self._file is not None
        self._file.close()
        self._file = None
        for index in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._open()
