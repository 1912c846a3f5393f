"""Engines whose model runs on an inference server: one transport per protocol, one engine for all.

* ``triton``: KServe v2 over HTTP (binary tensors) or gRPC, and Triton's model config for the
  batch limit.
* ``kserve``: the same v2 protocol for any server that speaks it (KServe, OpenVINO Model Server).
* ``tfserving``: TensorFlow Serving's REST predict API.
* ``torchserve``: TorchServe's inference API, with the tensor handler in ``servers/torchserve``.

The transport for a URL is imported when a stage loads it, so gRPC is imported only where used.
"""

from __future__ import annotations

from pydantic import model_validator

from ...modelcard import ModelCard
from ..base import RunSettings
from ..registry import register_engine
from .engine import RemoteEngine
from .options import RemoteOptions, ServerOptions, TritonOptions
from .transport import BadAnswer, Rejected, ServerModel, ServerTensor, Transport, Unavailable


class HttpOnlyOptions(RemoteOptions):
    """A protocol this project speaks over HTTP only."""

    @model_validator(mode="after")
    def _http(self) -> HttpOnlyOptions:
        if self.server.grpc:
            raise ValueError("server.url: this engine speaks HTTP (REST) only: use an http:// or https:// URL")
        return self


def _v2_transport(server: ServerOptions, *, read_config: bool) -> Transport:
    if server.grpc:
        from .kserve_grpc import KServeGrpc

        return KServeGrpc(server, read_config=read_config)
    from .kserve_http import KServeHttp

    return KServeHttp(server, read_config=read_config)


@register_engine("triton", TritonOptions)
def load_triton(card: ModelCard, options: TritonOptions, settings: RunSettings) -> RemoteEngine:
    return RemoteEngine(card, options, _v2_transport(options.server, read_config=True))


@register_engine("kserve", RemoteOptions)
def load_kserve(card: ModelCard, options: RemoteOptions, settings: RunSettings) -> RemoteEngine:
    return RemoteEngine(card, options, _v2_transport(options.server, read_config=False))


@register_engine("tfserving", HttpOnlyOptions)
def load_tfserving(card: ModelCard, options: HttpOnlyOptions, settings: RunSettings) -> RemoteEngine:
    from .tfserving import TfServingRest

    return RemoteEngine(card, options, TfServingRest(options.server))


@register_engine("torchserve", HttpOnlyOptions)
def load_torchserve(card: ModelCard, options: HttpOnlyOptions, settings: RunSettings) -> RemoteEngine:
    from .torchserve import TorchServeRest

    return RemoteEngine(card, options, TorchServeRest(options.server))


__all__ = [
    "BadAnswer",
    "Rejected",
    "RemoteEngine",
    "RemoteOptions",
    "ServerModel",
    "ServerOptions",
    "ServerTensor",
    "Transport",
    "TritonOptions",
    "Unavailable",
]
