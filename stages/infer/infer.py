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

With ``max_size: auto`` an item of a stream that is not live waits (as ``blocked``) until fewer
items are in than a batch of the size ``auto`` chose running and the next one filling need
(``admission``): the stage's in-flight room is sized for the largest batch, and filled at batch 1
it only made frames wait longer and hold their tensors.

Running a batch once formed (the model's thread, deferred frames, the recurrent state, the
outputs' slices) is ``runner``'s; this module is the stage: its params, the items, and the batcher.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
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
from pipeline.tensors import ModelInput, ModelOutput

from .admission import Admission
from .arrays import tensor_on_device
from .failures import EngineFailureLog
from .params import InferParams, infer_params_for
from .runner import ModelRunner, Work

LIVE_WAITING = 1
"""Items per live stream that may wait for the model: only the newest frame is worth running."""


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
        max_size = self.params.batch.max_size
        return self._items_for(self.params.batch.size_limit if max_size == "auto" else max_size)

    def _items_for(self, batch: int) -> int:
        """Items enough to fill one batch of ``batch`` while the others the engine runs at once run."""
        engine: Engine | None = getattr(self, "engine", None)
        return (1 + (engine.max_in_flight if engine is not None else 1)) * batch

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
        self._runner = ModelRunner(self.name, card, self.engine, ctx)
        self._live: set[str] = set()
        self._engine_errors = EngineFailureLog(ctx.logger, self.name)
        self.batcher: Batcher[Work] = Batcher(
            self._runner.run_batch,
            BatchPolicy(
                max_size=None if batch.max_size == "auto" else batch.max_size,
                max_delay_ms=batch.max_delay_ms,
                latency_budget_ms=batch.latency_budget_ms,
                max_waiting_per_stream=None if batch.latency_budget_ms is None else LIVE_WAITING,
                one_per_stream=bool(card.state),
                size_limit=batch.size_limit,
                max_concurrent=1 if card.state else self.engine.max_in_flight,
            ),
            release=self._runner.release_memory,
        )
        self._admission = Admission(self._admission_limit)
        await self._runner.warm_up()
        ctx.logger.info("model %s on %s, batch %s", card.name, self.engine.description, batch.max_size)

    def takes_device_arrays(self) -> bool:
        # Asked once started (consumers start first); a stage not started has no model yet.
        engine: Engine | None = getattr(self, "engine", None)
        return engine is not None and engine.on_device

    async def stop(self) -> None:
        if hasattr(self, "batcher"):
            self.batcher.cancel()  # every item is through or counted by now: nobody awaits the rest
        if hasattr(self, "_runner"):
            self._runner.shutdown()
        if hasattr(self, "engine"):
            await self.engine.close()

    def not_ready(self) -> str | None:
        engine: Engine | None = getattr(self, "engine", None)
        return engine.not_ready() if engine is not None else None

    async def on_stream_added(self, info: StreamInfo) -> None:
        if info.live:
            self._live.add(info.stream_id)
            self.batcher.limit_waiting(info.stream_id, LIVE_WAITING)
        self._runner.reset(info.stream_id)

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        self._live.discard(eos.stream_id)
        self.batcher.forget_stream(eos.stream_id)
        self._runner.reset(eos.stream_id)
        return ()

    def _admission_limit(self) -> int:
        """Items enough for batches of the size ``auto`` chose, as ``max_in_flight`` is for the largest."""
        return self._items_for(self.batcher.target_size)

    async def process(self, item: Item) -> Sequence[Item]:
        if self.params.batch.max_size != "auto" or item.stream_id in self._live:
            return await self._process(item)
        async with self._admission.held():
            item.mark("blocked")  # it waited for room, as for one of the stage's in-flight slots
            return await self._process(item)

    async def _process(self, item: Item) -> Sequence[Item]:
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

    def _request(self, item: Item, tensor: ModelInput, unit: object) -> Request[Work]:
        clock = self.batcher.clock
        return Request(
            item.stream_id,
            Work(tensor, item.seq),
            # Host and device tensors never share a batch: it is stacked where its tensors are.
            group=(tensor.shape, tensor.dtype.str, tensor_on_device(tensor)),
            item=unit,
            # The budget counts from capture (wall clock), the batcher from its own clock. Only
            # where freshness matters: the batcher also serves the freshest of such streams first.
            captured_at=clock.now() - max(0.0, time.time() - item.capture_time)
            if self.params.batch.latency_budget_ms is not None or item.stream_id in self._live
            else None,
        )
