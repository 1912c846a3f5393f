"""Fixtures shared by the unit tests: a thread pool and a ready StageContext factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.stage import Stage, StageContext
from pipeline.stats import StreamStats


@pytest.fixture()
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(2, thread_name_prefix="unit")
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture()
def make_ctx(executor: ThreadPoolExecutor, tmp_path: Path) -> Callable[..., StageContext]:
    """``make_ctx(stage_name, input_stages=(...))``: a StageContext with fresh stats."""

    def make(
        stage: str = "stage",
        *,
        input_stages: tuple[str, ...] = (),
        stats: StreamStats | None = None,
        consumers: tuple[Stage, ...] = (),
    ):
        return StageContext(
            pipeline="unit",
            stage=stage,
            base_dir=tmp_path,
            stats=stats if stats is not None else StreamStats(),
            executor=executor,
            input_stages=input_stages,
            consumers=consumers,
        )

    return make
