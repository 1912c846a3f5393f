"""``streamgraph run``'s progress bar (tqdm, on stderr, on a terminal only) and the lines it
writes without tearing it."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TextIO

from .runner import Runner


class Progress:
    """A progress bar over published frames, for finite sources; refreshed from the event loop."""

    def __init__(self, *, enabled: bool, out: TextIO = sys.stdout) -> None:
        self._enabled = enabled and sys.stderr.isatty()
        self._out = out
        self._bar: Any = None
        self._runner: Runner | None = None
        self._task: asyncio.Task[None] | None = None

    def attach(self, runner: Runner) -> None:
        if self._enabled:
            self._runner = runner
            self._task = asyncio.get_running_loop().create_task(self._follow(runner))

    async def _follow(self, runner: Runner) -> None:
        from tqdm import tqdm

        await runner.started.wait()
        self._bar = tqdm(unit="frame", dynamic_ncols=True, file=sys.stderr)
        while True:
            self._update()
            await asyncio.sleep(0.25)

    def _update(self) -> None:
        assert self._runner is not None
        stats = self._runner.stats
        counts = [c.frame_count for _, c in stats.items()]
        self._bar.total = sum(c for c in counts if c) if counts and all(counts) else None
        self._bar.n = stats.published
        self._bar.set_postfix(decoded=stats.decoded, dropped=stats.dropped, refresh=False)
        self._bar.refresh()

    def write(self, line: str) -> None:
        """A line on the output that does not tear the bar (it is redrawn below the line)."""
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(line, file=self._out)
            self._out.flush()
        else:
            print(line, file=self._out, flush=True)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._bar is not None:
            self._update()  # the final count, not the last periodic one
            self._bar.close()
