"""A model on an inference server, behind the engine interface: what every protocol shares.

``open`` waits (up to ``startup_timeout_s``) for the server and the model to be ready, then checks
the model's tensors as the server describes them against the model card: a mismatch is a
``ConfigError`` at ``params.server`` naming the model, the server and the difference.

``infer_async`` sends one request per batch. A transport error (``Unavailable``) is tried again
after ``backoff_s``, doubling up to ``max_backoff_s``, ``retries`` times; a refusal (``Rejected``)
never is. When every try failed the server is taken as down: ``not_ready`` says so (``/readyz``),
and batches fail at once without a request, except one every ``max_backoff_s`` that probes it.
The first answer brings it back. Each failed batch raises, and the ``infer`` stage counts its
frames (``error:engine:<stage>``): the pipeline keeps running, and results resume by themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from ...errors import ConfigError, EngineError
from ...modelcard import ModelCard, TensorSpec
from ..base import Engine, EngineMetadata, TensorInfo
from .options import RemoteOptions
from .transport import BadAnswer, Rejected, ServerModel, ServerTensor, Transport, Unavailable

log = logging.getLogger("streamgraph.engine.remote")


class RemoteEngine(Engine):
    remote = True

    def __init__(self, card: ModelCard, options: RemoteOptions, transport: Transport) -> None:
        super().__init__(card)
        self.server = options.server
        self.transport = transport
        self._model = ServerModel()
        self._output_names = [spec.name for spec in card.outputs]
        self._down_since: float | None = None
        self._down_reason = ""
        self._probe_at = 0.0

    @property
    def description(self) -> str:
        return f"{self.server.url} as {self.server.model!r} ({self.transport.protocol})"

    @property
    def max_in_flight(self) -> int:
        return self.server.max_in_flight

    def not_ready(self) -> str | None:
        if self._down_since is None:
            return None
        return f"{self.server.where()} is down: {self._down_reason}"

    def metadata(self) -> EngineMetadata:
        # The card was checked against the server's description in ``open`` (with the server's
        # own names for dtypes); a protocol without one (TorchServe) leaves the card as it is.
        def infos(specs: list[TensorSpec]) -> list[TensorInfo]:
            return [TensorInfo(spec.name, spec.dtype, list(spec.shape)) for spec in specs]

        return EngineMetadata(infos(self.card.inputs), infos(self.card.outputs), self._model.max_batch)

    def infer(self, feeds: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError("a remote engine runs on the event loop: call infer_async")

    async def open(self) -> None:
        await self.transport.open()
        try:
            await self._wait_ready()
            self._model = await self.transport.describe()
        except Rejected as exc:
            await self.transport.close()
            raise ConfigError("params.server", f"{self.server.where()}: {exc}") from None
        except EngineError:
            await self.transport.close()
            raise
        mismatch = card_mismatch(self.card, self._model)
        if mismatch is not None:
            await self.transport.close()
            raise ConfigError("params.server", f"{self.server.where()}: {mismatch}")

    async def close(self) -> None:
        await self.transport.close()

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.server.startup_timeout_s
        delay = self.server.backoff_s
        while True:
            try:
                await self.transport.wait_ready()
                return
            except Unavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise Unavailable(
                        f"{self.server.where()} ({self.transport.protocol}) not ready after "
                        f"{self.server.startup_timeout_s:g} s: {exc}"
                    ) from None
                log.info("waiting for %s: %s", self.server.where(), exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.server.max_backoff_s)

    async def infer_async(self, feeds: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        probing = self._down_since is not None
        if probing:
            if now < self._probe_at:
                raise Unavailable(self.not_ready() or "down")
            self._probe_at = now + self.server.max_backoff_s  # one probe at a time
        arrays = {name: np.ascontiguousarray(value) for name, value in feeds.items()}
        tries = 1 if probing else self.server.retries + 1
        delay = self.server.backoff_s
        for attempt in range(tries):
            try:
                outputs = await self.transport.infer(arrays, self._output_names)
            except Unavailable as exc:
                if attempt + 1 == tries:
                    self._mark_down(str(exc))
                    raise Unavailable(f"{self.server.where()}: {exc}") from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.server.max_backoff_s)
                continue
            except Rejected as exc:
                if probing:  # it answers, but cannot serve the model yet (Triton loading it)
                    self._mark_down(str(exc))
                raise Rejected(f"{self.server.where()}: {exc}") from None
            self._mark_up()
            batch = next(iter(arrays.values())).shape[0] if arrays else 1
            return check_answer(self.card, self.server.where(), outputs, batch)
        raise AssertionError("unreachable")

    def _mark_down(self, reason: str) -> None:
        self._down_reason = reason
        self._probe_at = time.monotonic() + self.server.max_backoff_s
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "%s is down (%s): batches fail and are counted until it answers; asking again every %g s",
                self.server.where(),
                reason,
                self.server.max_backoff_s,
            )

    def _mark_up(self) -> None:
        if self._down_since is not None:
            log.warning("%s answers again after %.1f s", self.server.where(), time.monotonic() - self._down_since)
            self._down_since = None


def card_mismatch(card: ModelCard, model: ServerModel) -> str | None:
    """How the model on the server differs from the card, or None. Its inputs must be the card's;
    its outputs must include the card's (only those are asked for). Where a protocol cannot tell
    (no inputs or outputs listed) there is nothing to check."""
    if model.inputs:
        have = sorted(t.name for t in model.inputs)
        want = sorted(spec.name for spec in card.inputs)
        if have != want:
            return f"inputs are {have}, the card says {want}"
    if model.outputs:
        missing = [spec.name for spec in card.outputs if spec.name not in {t.name for t in model.outputs}]
        if missing:
            return f"no output {missing[0]!r} (it has {sorted(t.name for t in model.outputs)})"
    for kind, specs, tensors in (("input", card.inputs, model.inputs), ("output", card.outputs, model.outputs)):
        by_name = {t.name: t for t in tensors}
        for spec in specs:
            tensor = by_name.get(spec.name)
            if tensor is not None:
                problem = _tensor_mismatch(spec, tensor)
                if problem:
                    return f"{kind} {spec.name!r} {problem}"
    return None


def _tensor_mismatch(spec: TensorSpec, tensor: ServerTensor) -> str | None:
    if tensor.dtype != spec.dtype:
        return f"is {tensor.datatype}, the card says {spec.dtype}"
    if not _shape_fits(tensor.shape, spec.shape):
        return f"has shape {tensor.shape}, the card says {list(spec.shape)}"
    return None


def _shape_fits(have: list[int], want: list[int | str]) -> bool:
    """A server's -1 takes any size; a card's named axis is any size the stage sends."""
    return len(have) == len(want) and all(
        h == -1 or not isinstance(w, int) or h == w for h, w in zip(have, want, strict=True)
    )


def check_answer(card: ModelCard, where: str, outputs: dict[str, Any], batch: int) -> dict[str, np.ndarray]:
    """The server's answer has every output the card lists, with its dtype and shape, a batch of
    ``batch`` on the batch axis; else ``BadAnswer`` naming the output."""
    checked = {}
    for spec in card.outputs:
        if spec.name not in outputs:
            raise BadAnswer(f"{where} answered without output {spec.name!r} (it sent {sorted(outputs)})")
        array = np.asarray(outputs[spec.name])
        want = [batch if dim == "batch" else dim for dim in spec.shape]
        if array.dtype != np.dtype(spec.dtype):
            raise BadAnswer(f"{where} answered output {spec.name!r} as {array.dtype}, the card says {spec.dtype}")
        fits = array.ndim == len(want) and all(
            not isinstance(w, int) or h == w for h, w in zip(array.shape, want, strict=True)
        )
        if not fits:
            shown = [str(w) for w in want]
            raise BadAnswer(
                f"{where} answered output {spec.name!r} with shape {list(array.shape)}, "
                f"expected [{', '.join(shown)}] for a batch of {batch}"
            )
        checked[spec.name] = array
    return checked
