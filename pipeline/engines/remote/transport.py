"""What one protocol's client does for a remote engine: check the server and model, run a batch.

A transport speaks one protocol (KServe v2 over HTTP or gRPC, TF Serving REST, TorchServe) and
knows nothing of retries, readiness or the model card: ``RemoteEngine`` does that for all of them.
It sorts every failure into one of three errors: ``Unavailable`` (worth trying again: the
connection failed or timed out, 502/503/504, gRPC UNAVAILABLE), ``Rejected`` (the server said no;
trying again would get the same answer) and ``BadAnswer`` (it answered with something else than
the tensors asked for).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import EngineError
from .dtypes import V2_TO_NUMPY
from .options import ServerOptions


class Unavailable(EngineError):
    """The server could not be reached, timed out, or said it cannot serve now: retried."""


class Rejected(EngineError):
    """The server refused the request (4xx, or a 5xx that is not about availability): not retried."""


class BadAnswer(EngineError):
    """The server answered, but not with the tensors asked for (names, dtype, shape)."""


@dataclass(frozen=True)
class ServerTensor:
    """One of the model's tensors as the server describes it."""

    name: str
    datatype: str
    """The protocol's own name (``FP32`` in KServe v2, ``DT_FLOAT`` in TF Serving), for messages."""
    dtype: str | None
    """numpy's name for it, or None where numpy has none (``BYTES``)."""
    shape: list[int]
    """As the server says it: -1 for an axis of any size (the batch axis among them)."""

    @classmethod
    def v2(cls, name: object, datatype: object, shape: Iterable[Any]) -> ServerTensor:
        """A tensor of KServe v2 model metadata (over HTTP or gRPC)."""
        kind = str(datatype)
        return cls(str(name), kind, V2_TO_NUMPY.get(kind), [int(d) for d in shape])


@dataclass(frozen=True)
class ServerModel:
    """What the server says about the model: what ``RemoteEngine`` checks the card against. An
    empty list where the protocol cannot tell (TorchServe has no metadata)."""

    inputs: list[ServerTensor] = field(default_factory=list)
    outputs: list[ServerTensor] = field(default_factory=list)
    max_batch: int | None = None
    """The most the model takes in one request, where the server tells (Triton's model config).
    The shapes are the whole request's either way: Triton lists a batching model's batch axis as
    -1, and a model with ``max_batch_size`` 0 takes exactly the shapes listed."""


@dataclass
class TransferCounts:
    """Bytes on the wire of the requests so far, both ways (HTTP/gRPC bodies, not headers)."""

    requests: int = 0
    sent: int = 0
    received: int = 0


class Transport(ABC):
    """One protocol's client for one model on one server. Coroutines run on the event loop."""

    def __init__(self, server: ServerOptions) -> None:
        self.server = server
        self.counts = TransferCounts()

    @property
    @abstractmethod
    def protocol(self) -> str:
        """For logs and errors: ``KServe v2 HTTP (binary)``, ``TF Serving REST``, ..."""

    @abstractmethod
    async def open(self) -> None:
        """Make the connection pool (no request yet)."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def wait_ready(self) -> None:
        """One check that the server is up and the model is ready to serve; ``Unavailable`` if
        not (the engine asks again until ``startup_timeout_s``), ``Rejected`` if the server
        says the model does not exist."""

    @abstractmethod
    async def describe(self) -> ServerModel:
        """The model's tensors (and batch limit) as the server has them."""

    @abstractmethod
    async def infer(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Run one batch: one request with every input, the named outputs back as host arrays.
        Within ``server.timeout_s`` or ``Unavailable``. The engine checks the answer's shapes."""
