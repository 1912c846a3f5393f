"""``infer``: run a model on frames or prepared tensors, batched across streams.

Fed frames, it prepares them as the model card's ``preprocess`` says (``pipeline.imaging``; the
``size`` and ``resize`` params override the card). Fed a preparing stage's output, an item carries
one tensor (a frame) or a list of them (text crops); each tensor is one request
to the stream-aware batcher (``pipeline.batching``), and the item gets one ``ModelOutput`` per
tensor, in the same order. Tensors of different shapes never share a batch, so results do not
depend on what else was in it. A recurrent model's state (declared in its card) is gathered per
stream into each batch and scattered back afterwards; it is reset when the stream starts, ends,
or skips items (a seq gap between the item that ran last and this one: dropped upstream or here),
and one batch never holds two items of one stream.

On a live stream (or with ``latency_budget_ms``) at most one item per stream waits for the model:
a newer one takes the older one's place, which is dropped and counted (``stale:<stage>``), so a
slow model makes the stage drop frames instead of falling further behind. An item that cannot be
through the model within its budget is dropped before inference (``deadline:<stage>``). A live
stream's frame is prepared just before its run (``DeferredTensor``: a batch of several side by
side in the thread pool, one alone on the model's thread), so only frames that run cost that work;
other streams' frames are prepared as they come, in the pool. The time counts as ``prepare``, and a
frame that cannot be prepared fails alone.

A model on an inference server (a remote engine) runs its batches on the event loop, up to its
``max_in_flight`` at once; the items of a batch its engine could not run are dropped and counted
(``error:engine:<stage>``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import imaging
from pipeline.batching import Batcher, BatchPolicy, DeadlineMissed, Request, Superseded
from pipeline.config import StrictModel
from pipeline.engines import Engine, RunSettings, UnknownEngine, check_engine, load_engine
from pipeline.errors import ConfigError, EngineError
from pipeline.media import EndOfStream, Item, StreamInfo, VideoFrame
from pipeline.modelcard import ModelCard, Preprocess, load_model_card
from pipeline.stage import Stage, StageContext, register_stage
from pipeline.tensors import DeferredTensor, ModelInput, ModelOutput

from .arrays import device_module, stack_batch, tensor_on_device
from .failures import EngineFailureLog
from .params import InferParams, infer_params_for
from .state import StreamStates
from .warmup import warm_up_feeds

LIVE_WAITING = 1
"""Items per live stream that may wait for the model: only the newest frame is worth running."""


@dataclass(slots=True)
class _Work:
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


@register_stage("infer")
class Infer(Stage):
    Params = InferParams
    params: InferParams
    latency_key = None  # process marks its own parts: prepare, batch_wait, infer
    latency_keys = ("prepare", "batch_wait", "infer")

    @classmethod
    def params_model(cls, raw: Any) -> type[StrictModel]:
        engine = raw.get("engine", "auto") if isinstance(raw, dict) else "auto"
        if not isinstance(engine, str):
            return cls.Params  # its validation names the wrong type
        try:
            return infer_params_for(engine)
        except UnknownEngine as exc:
            raise ConfigError("engine", str(exc)) from None

    def check(self, base_dir: Path) -> None:
        # The engine and its keys were checked when the params were made (InferParams).
        self._frame_tensors(self._load_card(base_dir))
        max_size = self.params.batch.max_size
        if isinstance(max_size, int) and max_size < 1:
            raise ConfigError("params.batch.max_size", f"expected an int >= 1 or 'auto', got {max_size}")

    def _load_card(self, base_dir: Path) -> ModelCard:
        card = load_model_card(self.params.model, base_dir)
        if len(card.data_inputs) != 1:
            names = [spec.name for spec in card.data_inputs]
            raise ConfigError("params.model", f"model {card.name!r} has data inputs {names}; infer feeds one")
        return card

    def _frame_tensors(self, card: ModelCard) -> tuple[Preprocess, tuple[int, int], str] | None:
        """How frames fed straight to the model are prepared (the card's ``preprocess``, with this
        stage's ``size`` and ``resize``), or None for a model the card gives no preprocess for."""
        spec = card.preprocess
        if spec is None:
            if self.params.size or self.params.resize:
                raise ConfigError("params.size", f"model {card.name!r} has no preprocess section to prepare frames by")
            return None
        return spec, imaging.tensor_size(card, spec, self.params.size), self.params.resize or spec.resize

    @property
    def max_in_flight(self) -> int:
        # Enough items waiting to fill one batch while the others run.
        max_size = self.params.batch.max_size
        engine: Engine | None = getattr(self, "engine", None)
        batches = 1 + (engine.max_in_flight if engine is not None else 1)
        return batches * (self.params.batch.size_limit if max_size == "auto" else max_size)

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        card = self._load_card(ctx.base_dir)
        self._frames = self._frame_tensors(card)
        if self._frames is not None:
            # The size this stage prepares frames at is the model's input size: TensorRT's profile
            # and the warm-up run are built for it.
            spec, size, _ = self._frames
            card = card.model_copy(update={"preprocess": spec.model_copy(update={"size": list(size)})})
        batch = self.params.batch
        settings = RunSettings(max_batch=batch.size_limit if batch.max_size == "auto" else batch.max_size)
        self.card = card
        self.engine: Engine = await ctx.run_blocking(
            load_engine, self.params.engine, card, self.params.engine_options(), settings
        )
        await self.engine.open()  # a remote engine connects and checks the model on its server
        check_engine(self.engine, settings)
        self.tensor_key = self.params.input or ctx.input_stages[0]
        self._warned_other_tensor = False
        self._data_input = card.data_inputs[0].name
        self._outputs = {
            spec.name: spec.shape.index("batch") if "batch" in spec.shape else 0 for spec in card.data_outputs
        }
        # On a GPU the constants go to the device once, not with every batch.
        self._xp = device_module() if self.engine.on_device else np
        self._constants = {
            spec.name: self._xp.asarray(card.constants[spec.name], dtype=spec.dtype)
            for spec in card.inputs
            if spec.name in card.constants
        }
        self._state = StreamStates(card)
        self._live: set[str] = set()
        self._ran_seq: dict[str, int] = {}
        """The seq of each stream's item that ran last: a later one that does not follow it resets the state."""
        # The model gets a thread of its own: in the shared pool a batch would queue behind the
        # demuxing, decoding and preparing of every stream, and wait there longer than it runs.
        # One thread is enough: the batcher runs one batch at a time, and the engine uses the cores.
        # A remote engine runs on the event loop, several batches at once.
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix=f"model-{self.name}")
        self._engine_errors = EngineFailureLog(ctx.logger, self.name)
        self.batcher: Batcher[_Work] = Batcher(
            self._run_batch,
            BatchPolicy(
                max_size=None if batch.max_size == "auto" else batch.max_size,
                max_delay_ms=batch.max_delay_ms,
                latency_budget_ms=batch.latency_budget_ms,
                max_waiting_per_stream=None if batch.latency_budget_ms is None else LIVE_WAITING,
                one_per_stream=bool(card.state),
                size_limit=batch.size_limit,
                max_concurrent=1 if card.state else self.engine.max_in_flight,
            ),
        )
        await self._warm_up()
        ctx.logger.info("model %s on %s, batch %s", card.name, self.engine.description, batch.max_size)

    async def _warm_up(self) -> None:
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

    def takes_device_arrays(self) -> bool:
        # Asked once started (consumers start first); a stage not started has no model yet.
        engine: Engine | None = getattr(self, "engine", None)
        return engine is not None and engine.on_device

    async def stop(self) -> None:
        if hasattr(self, "batcher"):
            self.batcher.cancel()  # every item is through or counted by now: nobody awaits the rest
        if hasattr(self, "_model_thread"):
            self._model_thread.shutdown(wait=False, cancel_futures=True)
        if hasattr(self, "engine"):
            await self.engine.close()

    def not_ready(self) -> str | None:
        engine: Engine | None = getattr(self, "engine", None)
        return engine.not_ready() if engine is not None else None

    async def on_stream_added(self, info: StreamInfo) -> None:
        if info.live:
            self._live.add(info.stream_id)
            self.batcher.limit_waiting(info.stream_id, LIVE_WAITING)
        self._state.reset(info.stream_id)
        self._ran_seq.pop(info.stream_id, None)

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        self._live.discard(eos.stream_id)
        self.batcher.forget_stream(eos.stream_id)
        self._state.reset(eos.stream_id)
        self._ran_seq.pop(eos.stream_id, None)
        return ()

    async def process(self, item: Item) -> Sequence[Item]:
        prepared = item.tensors.pop(self.tensor_key, None)
        if prepared is None and self._prepares_frame_of(item):
            assert isinstance(item.media, VideoFrame) and self._frames is not None
            prepared = await self._tensor_of(item, item.media, self._frames)
        tensors: list[ModelInput]
        if isinstance(prepared, ModelInput):
            tensors = [prepared]
        elif isinstance(prepared, list) and all(isinstance(t, ModelInput) for t in prepared):
            tensors = prepared
        else:
            raise ValueError(
                f"no tensor from stage {self.tensor_key!r} on this item, nor a frame the model card says how to prepare"
            )
        unit = object()  # the item's tensors wait, and are superseded, together
        requests = [self._request(item, tensor, unit) for tensor in tensors]
        submitted = self.batcher.clock.now()
        outcomes = await asyncio.gather(*(self.batcher.submit(r) for r in requests), return_exceptions=True)
        for missed, reason in ((Superseded, "stale"), (DeadlineMissed, "deadline"), (EngineError, "error:engine")):
            failure = next((o for o in outcomes if isinstance(o, missed)), None)
            if failure is not None:
                if isinstance(failure, EngineError):
                    self._engine_errors.log(failure)
                self.ctx.stats.drop_item(item, f"{reason}:{self.name}")
                return ()
        results: list[dict[str, np.ndarray]] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        if requests:
            # batch_wait: from handing the tensors over to the item's first run; prepare: a frame
            # prepared just before its run; infer (the mark below): the rest since the item's
            # last part ended, i.e. its runs (a crop list's later batches too) and getting back here.
            first_run = min(r.started_at for r in requests)
            item.add_time("batch_wait", max(0.0, first_run - submitted) * 1000.0)
            prepare_ms = max(r.payload.prepare_ms for r in requests)
            if prepare_ms:
                item.add_time("prepare", prepare_ms)
        item.mark("infer")
        found = [
            ModelOutput(model=self.card.name, outputs=outputs, geometry=tensor.geometry)
            for tensor, outputs in zip(tensors, results, strict=True)
        ]
        item.tensors[self.name] = found[0] if isinstance(prepared, ModelInput) else found
        return (item,)

    def _prepares_frame_of(self, item: Item) -> bool:
        """Whether to prepare the item's frame here: it has one, the card says how, and no tensor
        was named for this model (``input`` set and missing is a mistake, not a frame to prepare).
        A tensor of another stage on the item (a ``prepare`` further up, not named as ``input``)
        is told once: the frame is prepared again here, at this stage's size."""
        if not isinstance(item.media, VideoFrame) or self._frames is None or self.params.input is not None:
            return False
        if not self._warned_other_tensor and any(isinstance(t, ModelInput) for t in item.tensors.values()):
            self._warned_other_tensor = True
            self.ctx.logger.warning(
                "the items carry tensors of %s, not of %s (this stage's first input): the model prepares the frame "
                "itself; set params.input to use one of those",
                ", ".join(sorted(item.tensors)),
                self.tensor_key,
            )
        return True

    async def _tensor_of(
        self, item: Item, frame: VideoFrame, how: tuple[Preprocess, tuple[int, int], str]
    ) -> ModelInput:
        """A frame fed straight to the model, as its tensor: on a live stream prepared only if and
        when the model runs it (most live frames a busy model gets are dropped here: a newer one
        takes their place, or they cannot finish in time); else now, in the thread pool, side by
        side with other streams' frames."""
        spec, size, resize = how
        if item.stream_id in self._live:
            return imaging.deferred_frame(frame, size, resize, spec)
        tensor = await self.ctx.run_blocking(imaging.prepare_frame, frame, size, resize, spec)
        item.mark("prepare")
        return tensor

    def _request(self, item: Item, tensor: ModelInput, unit: object) -> Request[_Work]:
        clock = self.batcher.clock
        return Request(
            item.stream_id,
            _Work(tensor, item.seq),
            # Host and device tensors never share a batch: it is stacked where its tensors are.
            group=(tensor.shape, tensor.dtype.str, tensor_on_device(tensor)),
            item=unit,
            # The budget counts from capture (wall clock), the batcher from its own clock. Only
            # where freshness matters: the batcher also serves the freshest of such streams first.
            captured_at=clock.now() - max(0.0, time.time() - item.capture_time)
            if self.params.batch.latency_budget_ms is not None or item.stream_id in self._live
            else None,
        )

    async def _run_batch(self, requests: list[Request[_Work]]) -> list[dict[str, np.ndarray] | BaseException]:
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

    async def _run_remote(self, requests: list[Request[_Work]]) -> list[dict[str, np.ndarray]]:
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

    async def _prepare_deferred(self, requests: list[Request[_Work]], *, at_least: int) -> dict[int, BaseException]:
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

    def _infer(self, batch: list[Request[_Work]]) -> list[dict[str, np.ndarray] | BaseException]:
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

    def _run_model(self, requests: list[Request[_Work]], tensors: list[Any]) -> list[dict[str, np.ndarray]]:
        streams = self._streams_of(requests)
        feeds: dict[str, Any] = {self._data_input: stack_batch(tensors)}
        feeds.update(self._constants)
        feeds.update(self._state.gather(streams))
        began = time.perf_counter()
        outputs = self.engine.infer(feeds)
        return self._outputs_of(requests, streams, outputs, time.perf_counter() - began)

    def _streams_of(self, requests: list[Request[_Work]]) -> list[str]:
        """The batch's streams, in order; a stream whose items skipped some starts its state over."""
        for request in requests:
            last = self._ran_seq.get(request.stream_id)
            if last is not None and request.payload.seq not in (last, last + 1):  # last: an item's other tensor
                self._state.reset(request.stream_id)
            self._ran_seq[request.stream_id] = request.payload.seq
        return [r.stream_id for r in requests]

    def _outputs_of(
        self, requests: list[Request[_Work]], streams: list[str], outputs: dict[str, Any], model_s: float
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
