"""The engine interface: named inputs and outputs, a batch in, a batch out."""

from __future__ import annotations

import ctypes
import gc
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import StrictModel
from ..errors import ModelError
from ..modelcard import ModelCard, TensorSpec


class EngineOptions(StrictModel):
    """Base of an engine's options: the keys of an ``infer`` stage's params that the engine reads
    (``providers``, ``server``, ...). Each engine declares its own strict model, so a key the chosen
    engine does not take is a config error before anything starts."""


@dataclass(frozen=True)
class RunSettings:
    """What the ``infer`` stage itself asks of an engine (not YAML keys of the engine's)."""

    max_batch: int = 1
    """The largest batch the stage sends (TensorRT builds its optimization profile up to it)."""
    device_outputs: bool = False
    """GPU engines return device arrays (CuPy) instead of copying outputs to host numpy arrays."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as an engine runs it."""

    name: str
    dtype: str
    """numpy's name for it (``float32``), or the engine's own where numpy has none."""
    shape: list[int | str]
    """Fixed sizes as ints; an axis the engine takes at any size by a name."""


@dataclass(frozen=True)
class EngineMetadata:
    """What an engine really runs: its tensors' names, dtypes and shapes (an int, or a name for an
    axis it takes at any size), and the largest batch it takes (None: no limit it knows of). The
    infer stage checks the model card against it (``check_card``)."""

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    max_batch: int | None = None


class Engine(ABC):
    """A loaded model. ``infer`` is blocking: callers run it in the thread pool. An engine whose
    model runs elsewhere (``remote``: an inference server) is used through its coroutines
    instead: ``open`` once, ``infer_async`` per batch, up to ``max_in_flight`` at once, ``close``."""

    remote: bool = False

    def __init__(self, card: ModelCard) -> None:
        self.card = card
        self.host_copies = 0
        """Host inputs a GPU engine had to copy to the device (0 in a zero-copy GPU pipeline)."""
        self.device_copies = 0
        """Device inputs a CPU engine had to copy to the host (NVDEC frames fed to a CPU model)."""

    @property
    def on_device(self) -> bool:
        """Whether the model runs on a GPU, so device inputs (``__cuda_array_interface__``) are
        taken as they are and host inputs are copied there."""
        return False

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.card.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.card.outputs

    @property
    @abstractmethod
    def description(self) -> str:
        """What runs the model (engine and device), for logs."""

    @abstractmethod
    def metadata(self) -> EngineMetadata:
        """The tensors and batch limit of the model as this engine loaded it."""

    @abstractmethod
    def infer(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run one batch: input name -> array, returns output name -> array."""

    @property
    def max_in_flight(self) -> int:
        """Batches to keep running at once: 1 for a model in this process (it uses the cores)."""
        return 1

    def release_memory(self, batch: int) -> None:  # noqa: B027 (a hook: most engines keep nothing)
        """Batches of more than ``batch`` have stopped running (``max_size: auto`` went back to a
        smaller size): give back the working memory they took. Called on a model thread (where
        OpenVINO's ``throughput`` hint runs several batches at once, others may be running)."""

    def not_ready(self) -> str | None:
        """Why the engine cannot run a batch now (its server is down), or None: ``/readyz``."""
        return None

    async def open(self) -> None:  # noqa: B027 (a hook: local engines need no set-up)
        """Set-up on the event loop after ``load`` (a remote engine connects and checks the model)."""

    async def close(self) -> None:  # noqa: B027 (a hook)
        """Release what ``open`` took."""

    async def infer_async(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """A remote engine's ``infer``: on the event loop, many at once."""
        raise NotImplementedError(f"{type(self).__name__} runs in a thread: call infer")


def return_freed_memory() -> None:
    """Give memory an engine freed back to the system (``engine: auto``'s loser, the working memory
    of batches no longer run). glibc keeps freed heap for reuse, and the process would carry it
    for its whole life (about 170 MB for the text detector's loser). Linux with glibc only;
    elsewhere a no-op."""
    gc.collect()
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)


def is_contiguous(interface: dict[str, Any]) -> bool:
    """Whether a ``__cuda_array_interface__`` describes a C-contiguous buffer (``strides`` None,
    or equal to the dense strides of its shape)."""
    strides = interface.get("strides")
    if strides is None:
        return True
    expected = []
    step = np.dtype(interface["typestr"]).itemsize
    for dim in reversed(interface["shape"]):
        expected.append(step)
        step *= dim
    return tuple(strides) == tuple(reversed(expected))


def check_card(card: ModelCard, metadata: EngineMetadata) -> None:
    """The model as the engine runs it must have exactly the card's tensors, with its dtypes and
    compatible shapes; a ``ModelError`` names the card and the difference."""
    check_signature(card, "input", card.inputs, metadata.inputs)
    check_signature(card, "output", card.outputs, metadata.outputs)


def check_signature(card: ModelCard, kind: str, specs: list[TensorSpec], actual: list[TensorInfo]) -> None:
    by_name = {node.name: node for node in actual}
    expected_names = [spec.name for spec in specs]
    if sorted(by_name) != sorted(expected_names):
        raise ModelError(
            f"model {card.name!r} ({card.card_path}): card lists {kind}s {expected_names}, "
            f"the model has {sorted(by_name)}"
        )
    for spec in specs:
        node = by_name[spec.name]
        if node.dtype != spec.dtype:
            raise ModelError(
                f"model {card.name!r}: {kind} {spec.name!r} is {node.dtype} in the model, {spec.dtype} in the card"
            )
        shape = list(node.shape)
        fits = len(shape) == len(spec.shape) and all(
            not (isinstance(have, int) and isinstance(want, int)) or have == want
            for have, want in zip(shape, spec.shape, strict=True)
        )
        if not fits:
            raise ModelError(
                f"model {card.name!r}: {kind} {spec.name!r} has shape {shape} in the model, {spec.shape} in the card"
            )
