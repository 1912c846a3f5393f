"""Running ``infer``'s batches on its model: one batch of requests in, one result per request out.

``ModelRunner`` owns what a batch needs once the batcher has formed it: the engine's thread (or
the event loop, for a remote engine), the card's constants, the stacking of the inputs, preparing
the frames still deferred, the recurrent state gathered per stream before a run and scattered
back after it (reset when a stream's items skip some), and each request's slice of the outputs.
Which items wait, and which are dropped, is the stage's (``infer.Infer``) and the batcher's.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.batching import Request
from pipeline.engines import Engine
from pipeline.engines.warmup import constant_feeds, warm_up_feeds
from pipeline.modelcard import ModelCard
from pipeline.stage import StageContext
from pipeline.tensors import DeferredTensor, ModelInput

from .arrays import device_module, stack_batch
from .state import StreamStates


@dataclass(slots=True)
class Work:
    """One request's payload: a tensor of an item, and the item's seq (for the state's resets)."""

    tensor: ModelInput
    seq: int
    prepare_ms: float = 0.0
    """Time spent preparing a deferred tensor just before the run."""

    def array(self) -> Any:
        """The tensor's array; a deferred one is prepared now (blocking), if it was not yet."""
        began = time.perf_counter()
        array = self.tensor.array()
        if isinstance(self.tensor, DeferredTensor):
            self.prepare_ms = max(self.prepare_ms, (time.perf_counter() - began) * 1000.0)
        return array


class ModelRunner:
    """Runs the batches of the stage ``name`` on its started ``engine`` (``run_batch``)."""

    def __init__(self, name: str, card: ModelCard, engine: Engine, ctx: StageContext) -> None:
        self.name = name
        self.card = card
        self.engine = engine
        self.ctx = ctx
        self._data_input = card.data_inputs[0].name
        self._outputs = {
            spec.name: spec.shape.index("batch") if "batch" in spec.shape else 0 for spec in card.data_outputs
        }
        # On a GPU the constants go to the device once, not with every batch.
        self._xp = device_module() if engine.on_device else np
        self._constants = constant_feeds(card, self._xp)
        self._state = StreamStates(card)
        self._ran_seq: dict[str, int] = {}
        """The seq of each stream's item that ran last: a later one that does not follow it resets the state."""
        # The model gets a thread of its own: in the shared pool a batch would queue behind the
        # demuxing, decoding and preparing of every stream, and wait there longer than it runs.
        # One thread per batch the engine runs at once: one for most (the batcher runs one batch at
        # a time, and the engine uses the cores); OpenVINO's ``throughput`` hint runs several, each
        # on an infer request of its own. A remote engine runs on the event loop, several at once.
        threads = 1 if engine.remote else max(1, engine.max_in_flight)
        self._model_thread = ThreadPoolExecutor(threads, thread_name_prefix=f"model-{name}")

    def reset(self, stream_id: str) -> None:
        """The stream starts over (it started or ended): its state is zeros again."""
        self._state.reset(stream_id)
        self._ran_seq.pop(stream_id, None)

    def release_memory(self, batch: int) -> None:
        """The batches went back to ``batch`` items: the engine gives back what bigger ones took,
        on the model's thread, after the run in progress (not in the middle of one)."""
        if self.engine.remote:
            return
        future = self._model_thread.submit(self.engine.release_memory, batch)
        future.add_done_callback(self._released)

    def _released(self, future: Future[None]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:  # the memory stays taken; the model still runs
            self.ctx.logger.warning("model %s: could not release the memory of bigger batches: %s", self.name, exc)

    def shutdown(self) -> None:
        self._model_thread.shutdown(wait=False, cancel_futures=True)

    async def warm_up(self) -> None:
        """One run on zeros of the card's input size before the first frame: an engine's first run
        of a shape allocates and plans, several times slower than the rest, and the frames in it
        would carry that as latency."""
        feeds = warm_up_feeds(self.card, self._xp)
        if feeds is None:
            return
        feeds.update(self._constants)
        try:
            if self.engine.remote:
                await self.engine.infer_async(feeds)
            else:
                await asyncio.get_running_loop().run_in_executor(self._model_thread, self.engine.infer, feeds)
        except Exception as exc:  # a model that cannot run zeros will say so on real input too
            self.ctx.logger.warning("model %s: warm-up run failed: %s", self.card.name, exc)

    async def run_batch(self, requests: list[Request[Work]]) -> list[dict[str, np.ndarray] | BaseException]:
        failed = await self._prepare_deferred(requests, at_least=1 if self.engine.remote else 2)
        runnable = [r for r in requests if id(r) not in failed]
        outcomes: list[dict[str, np.ndarray] | BaseException] = []
        if runnable and self.engine.remote:
            outcomes = list(await self._run_remote(runnable))
        elif runnable:
            loop = asyncio.get_running_loop()
            outcomes = await loop.run_in_executor(self._model_thread, self._infer, runnable)
        ran = iter(outcomes)
        return [failed[id(r)] if id(r) in failed else next(ran) for r in requests]

    async def _run_remote(self, requests: list[Request[Work]]) -> list[dict[str, np.ndarray]]:
        """One request to the server for the batch (its frames were prepared in the pool); the
        batch is stacked in the pool too, so the event loop only waits on the network."""
        streams = self._streams_of(requests)
        feeds: dict[str, Any] = {
            self._data_input: await self.ctx.run_blocking(stack_batch, [r.payload.array() for r in requests])
        }
        feeds.update(self._constants)
        feeds.update(self._state.gather(streams))
        began = time.perf_counter()
        outputs = await self.engine.infer_async(feeds)
        return self._outputs_of(requests, streams, outputs, time.perf_counter() - began)

    async def _prepare_deferred(self, requests: list[Request[Work]], *, at_least: int) -> dict[int, BaseException]:
        """Prepare a batch's deferred frames side by side in the pool, when there are ``at_least``
        (a batch of live frames on a GPU, or any for a remote model), not one after another on the
        model's thread; a single one is left to that thread (the pool may be busy decoding, the
        model would wait for a turn there). Each request's wait counts as its ``prepare`` time,
        and as part of the batch's cost for ``auto``. Returns the requests whose frame failed (by
        id), with the error: they fail alone, the rest still run together."""
        deferred = [r for r in requests if isinstance(r.payload.tensor, DeferredTensor)]
        if len(deferred) < at_least:
            return {}
        began = time.perf_counter()
        outcomes = await asyncio.gather(
            *(self.ctx.run_blocking(r.payload.array) for r in deferred), return_exceptions=True
        )
        waited_ms = (time.perf_counter() - began) * 1000.0
        for request in deferred:
            request.payload.prepare_ms = waited_ms
            request.prepare_s = waited_ms / 1000.0
        return {id(r): o for r, o in zip(deferred, outcomes, strict=True) if isinstance(o, BaseException)}

    def _infer(self, batch: list[Request[Work]]) -> list[dict[str, np.ndarray] | BaseException]:
        """Prepare what is still deferred, then run the model on the requests whose input is
        ready; one whose frame cannot be prepared gets its error, and the rest still run."""
        tensors: list[Any] = []
        failed: dict[int, BaseException] = {}
        for request in batch:
            try:
                tensors.append(request.payload.array())
            except Exception as exc:
                failed[id(request)] = exc
            # A frame prepared here, on the model's thread, just now: part of the batch's cost.
            request.prepare_s = max(request.prepare_s, request.payload.prepare_ms / 1000.0)
        requests = [r for r in batch if id(r) not in failed]
        outputs = iter(self._run_model(requests, tensors) if requests else [])
        return [failed[id(r)] if id(r) in failed else next(outputs) for r in batch]

    def _run_model(self, requests: list[Request[Work]], tensors: list[Any]) -> list[dict[str, np.ndarray]]:
        streams = self._streams_of(requests)
        feeds: dict[str, Any] = {self._data_input: stack_batch(tensors)}
        feeds.update(self._constants)
        feeds.update(self._state.gather(streams))
        began = time.perf_counter()
        outputs = self.engine.infer(feeds)
        return self._outputs_of(requests, streams, outputs, time.perf_counter() - began)

    def _streams_of(self, requests: list[Request[Work]]) -> list[str]:
        """The batch's streams, in order; a stream whose items skipped some starts its state over."""
        for request in requests:
            last = self._ran_seq.get(request.stream_id)
            if last is not None and request.payload.seq not in (last, last + 1):  # last: an item's other tensor
                self._state.reset(request.stream_id)
            self._ran_seq[request.stream_id] = request.payload.seq
        return [r.stream_id for r in requests]

    def _outputs_of(
        self, requests: list[Request[Work]], streams: list[str], outputs: dict[str, Any], model_s: float
    ) -> list[dict[str, np.ndarray]]:
        """Each request's slice of the batch's outputs; the state goes back to its stream."""
        self.ctx.metrics.observe_batch(self.name, self.card.name, len(requests), model_s)
        for request in requests:
            request.model_s = model_s
        self._state.scatter(streams, outputs)
        return [
            {name: np.take(outputs[name], index, axis=axis) for name, axis in self._outputs.items()}
            for index in range(len(requests))
        ]
