"""The ``server:`` key of an ``infer`` stage whose model runs on an inference server."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from ...config import StrictModel
from ...urls import url_problem
from ..base import EngineOptions

SCHEMES = ("http", "https", "grpc")


class ServerOptions(StrictModel):
    url: str
    """``http://host:port`` (or ``https://``); ``grpc://host:port`` selects gRPC where the
    protocol has it (KServe v2: ``triton``, ``kserve``)."""
    model: str = Field(min_length=1)
    """The model's name on the server."""
    version: str | None = None
    """The model version to ask for; the server's choice by default."""
    max_in_flight: int = Field(default=2, ge=1, le=64)
    """Batches on their way to or from the server at once: two let the network time of one
    overlap the server's compute of the other."""
    timeout_s: float = Field(default=10.0, gt=0)
    """One request's time limit; past it the request is retried (as a transport error)."""
    retries: int = Field(default=2, ge=0, le=10)
    """Further tries of a request after a transport error, 502/503/504 or gRPC UNAVAILABLE;
    never after another 4xx or 5xx answer."""
    backoff_s: float = Field(default=0.1, gt=0)
    """Wait before the first retry; doubled before each next one (up to ``max_backoff_s``)."""
    max_backoff_s: float = Field(default=2.0, gt=0)
    """Longest wait between tries; while the server is down, also how often one batch probes it."""
    startup_timeout_s: float = Field(default=30.0, ge=0)
    """How long ``start`` waits for the server and the model to become ready."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Sent with every request (HTTP headers; gRPC metadata, names lower-cased): a gateway's
    ``Authorization``, or the ``triton-access-token`` of Triton's restricted APIs."""
    binary: Literal["auto", True, False] = "auto"
    """KServe v2 over HTTP: tensors as raw bytes (the binary tensor data extension); ``auto``:
    where the server lists the extension, else JSON."""

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        problem = url_problem(url, SCHEMES, "http://host:port, https://host:port or grpc://host:port")
        if problem:
            raise ValueError(problem)
        return url.rstrip("/")

    @property
    def grpc(self) -> bool:
        return urlsplit(self.url).scheme == "grpc"

    def where(self) -> str:
        """How errors name the model on the server: ``model 'det' (version 2) on http://...``."""
        version = f" (version {self.version})" if self.version else ""
        return f"model {self.model!r}{version} on {self.url}"


class RemoteOptions(EngineOptions):
    """The engine keys of an ``infer`` stage on an inference server."""

    server: ServerOptions


class TritonServerOptions(ServerOptions):
    shared_memory: bool = False
    """A Triton on this host (HTTP): inputs through system shared memory regions, not in the
    request body."""

    @model_validator(mode="after")
    def _http(self) -> TritonServerOptions:
        if self.shared_memory and self.grpc:
            raise ValueError("shared_memory: over HTTP only (an http:// URL of a Triton on this host)")
        return self


class TritonOptions(RemoteOptions):
    server: TritonServerOptions
