"""The Python API, for programs that embed a pipeline: build it from a YAML file or a dict, run it
in your own asyncio loop (or a thread of its own), and take its results from an async iterator or
a callback, with the decoded frame when you ask for it.

```python
from streamgraph import Pipeline

async with Pipeline("configs/objects.yaml", sources=["my.mp4"]) as pipeline:
    async for message, frame in pipeline.results():
        print(message["seq"], [o["label"] for o in message["results"]["objects"]["objects"]])
```

Results come straight from ``publish``, in this process (a sink of the run, ``ResultSink``),
besides going to NATS and the config's sinks as ever. Like every sink it never makes the
pipeline wait: a consumer that falls more than ``max_pending`` results behind loses the oldest,
counted in ``dropped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .config import PipelineConfig, load_config, parse_config
from .control import StreamOperations
from .errors import PipelineError
from .media import VideoFrame
from .runner import Runner, RunSummary
from .sinks.base import Sink, SinkMessage
from .sources import with_sources
from .tensors import to_host


class Result(NamedTuple):
    message: dict[str, Any]
    """The result message, as published on NATS ([Messages](docs/messages.md))."""
    frame: np.ndarray | None
    """The decoded frame (BGR, height x width x 3) with ``frames=True``, else None."""


ResultCallback = Callable[[dict[str, Any], "np.ndarray | None"], Any]
_END = object()


class ResultSink(Sink):
    """Results handed to this process's code: a bounded queue the iterator reads, and a callback."""

    kind = "python"

    def __init__(self, *, max_pending: int, frames: bool, on_result: ResultCallback | None) -> None:
        super().__init__("python", max_pending=max_pending, max_batch=16)
        self.events = False
        self.wants_frames = frames
        self.on_result = on_result
        self.queue: asyncio.Queue[Result | object] = asyncio.Queue()

    async def deliver(self, batch: list[SinkMessage]) -> None:
        for message in batch:
            frame = await asyncio.to_thread(_pixels, message.frame) if self.wants_frames else None
            result = Result(message.body, frame)
            if self.on_result is not None:
                answer = self.on_result(result.message, result.frame)
                if asyncio.iscoroutine(answer):
                    await answer
            self.queue.put_nowait(result)
            # The iterator's queue is bounded as the outbox is: a reader that lags loses the oldest.
            while self.queue.qsize() > self.max_pending:
                self.queue.get_nowait()
                self.dropped["full"] += 1


def _pixels(frame: Any) -> np.ndarray | None:
    return np.asarray(to_host(frame.bgr())) if isinstance(frame, VideoFrame) else None


class Pipeline:
    """One pipeline run, in the caller's event loop, built (and checked: ``ConfigError``) here.
    ``config``: a YAML path, a dict (as the YAML would be; relative paths against ``base_dir``)
    or a ``PipelineConfig``. ``sources``: media to
    run it on instead of its own source (as ``run --source``). ``nats_url`` overrides
    ``nats.url``. ``on_result(message, frame)`` is called for each result (a coroutine function is
    awaited); ``frames=True`` decodes each result's frame for it."""

    def __init__(
        self,
        config: str | Path | dict[str, Any] | PipelineConfig,
        *,
        sources: Sequence[str] = (),
        nats_url: str | None = None,
        on_result: ResultCallback | None = None,
        frames: bool = False,
        max_pending: int = 256,
        base_dir: str | Path = ".",
    ) -> None:
        if isinstance(config, PipelineConfig):
            self.config = config
        elif isinstance(config, dict):
            self.config = parse_config(config, base_dir=Path(base_dir).resolve())
        else:
            self.config = load_config(config)
        if sources:
            self.config = with_sources(self.config, list(sources))
        from .service import build

        self.graph = build(self.config)  # every config error here, before anything starts
        self.nats_url = nats_url
        self.sink = ResultSink(max_pending=max_pending, frames=frames, on_result=on_result)
        self._runner: Runner | None = None
        self._started = asyncio.Event()
        self._task: asyncio.Task[RunSummary] | None = None

    @property
    def dropped(self) -> int:
        """Results this process's consumer lost by falling behind."""
        return sum(self.sink.dropped.values())

    async def start(self) -> None:
        """Start the run (the bus, the stages) and return once its stages are up."""
        from .service import run_pipeline

        self._task = asyncio.create_task(
            run_pipeline(
                self.config,
                nats_url=self.nats_url,
                graph=self.graph,
                handle_signals=False,
                on_started=self._on_started,
                extra_sinks=[self.sink],
            )
        )
        self._task.add_done_callback(lambda _: self.sink.queue.put_nowait(_END))
        started = asyncio.create_task(self._started.wait())
        await asyncio.wait({self._task, started}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if self._task.done():
            self._task.result()  # a config error or a failed start: raise it here

    def _on_started(self, runner: Runner) -> None:
        self._runner = runner
        self._started.set()

    async def wait(self) -> RunSummary:
        """Until every finite stream has ended (or ``stop``): the run's summary."""
        if self._task is None:
            await self.start()
        assert self._task is not None
        return await self._task

    async def stop(self) -> RunSummary:
        """Drain and stop (as Ctrl-C does): the run's summary."""
        if self._runner is not None:
            self._runner.request_stop()
        return await self.wait()

    async def __aenter__(self) -> Pipeline:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def results(self) -> AsyncIterator[Result]:
        """Each result as ``(message, frame)``, until the run ends."""
        while True:
            result = await self.sink.queue.get()
            if result is _END:
                self.sink.queue.put_nowait(_END)  # for another iterator, or a second loop
                return
            assert isinstance(result, Result)
            yield result

    async def add_stream(self, stream_id: str, uri: str, **options: Any) -> None:
        """Add a stream to the pipeline's ``streams`` source (as ``POST /streams``)."""
        control = self._control()
        await control.add(control.parse({"id": stream_id, "uri": uri, "options": options}))

    async def remove_stream(self, stream_id: str) -> None:
        await self._control().remove(stream_id)

    def streams(self) -> list[dict[str, Any]]:
        """The streams running now, and those that failed recently (as ``GET /streams``)."""
        return self._control().list()

    def _control(self) -> StreamOperations:
        if self._runner is None:
            raise PipelineError("the pipeline is not running: start() it first")
        return self._runner.control


class PipelineThread:
    """A ``Pipeline`` on an event loop of its own, in a thread: for code that is not asyncio.
    ``on_result`` is called on that thread."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.summary: RunSummary | None = None
        self.error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="streamgraph", daemon=True)
        self._started = threading.Event()
        self._thread.start()
        self._started.wait()
        if self.error is not None:
            raise self.error

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._run())
        finally:
            self._started.set()
            self._loop.close()

    async def _run(self) -> None:
        try:
            await self.pipeline.start()
        except BaseException as exc:
            self.error = exc
            return
        finally:
            self._started.set()
        try:
            self.summary = await self.pipeline.wait()
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        """Ask the run to drain and stop; ``join`` waits for it."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: it is over already
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self.pipeline.stop()))

    def join(self, timeout_s: float | None = None) -> RunSummary | None:
        self._thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        return self.summary


def run_in_thread(pipeline: Pipeline) -> PipelineThread:
    """Start ``pipeline`` on a thread of its own; ``.stop()`` and ``.join()`` it from any thread."""
    return PipelineThread(pipeline)
