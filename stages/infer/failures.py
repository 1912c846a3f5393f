"""How ``infer`` logs batches its engine could not run (a server down): without flooding the log."""

from __future__ import annotations

import time
from typing import Any

from pipeline.errors import EngineError


class EngineFailureLog:
    """Logs an engine's failed batches without flooding: a new message at once, the same one
    again at most every ``every_s`` seconds, with how many failed meanwhile."""

    def __init__(self, logger: Any, stage: str, every_s: float = 10.0) -> None:
        self._logger = logger
        self._stage = stage
        self._every_s = every_s
        self._last = ""
        self._last_at = 0.0
        self._since = 0

    def log(self, error: EngineError) -> None:
        message = str(error)
        now = time.monotonic()
        if message == self._last and now - self._last_at < self._every_s:
            self._since += 1
            return
        how = "the same way" if message == self._last else "as logged before"
        repeats = f" ({self._since} more items failed {how} meanwhile)" if self._since else ""
        self._logger.warning("%s; the item is counted as error:engine:%s%s", message, self._stage, repeats)
        self._last, self._last_at, self._since = message, now, 0
