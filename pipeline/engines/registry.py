"""Engines by name, as stages are: each engine module registers a loader and a strict options model.

``infer`` looks its ``engine:`` up here; the options model validates the engine's keys of the
stage's params before anything starts; ``create_engine`` loads the model and checks the model card
against what the engine really runs (``Engine.metadata``). A new engine (a remote inference server,
say) is one module that calls ``register_engine``, imported by ``pipeline.engines``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..config import did_you_mean
from ..errors import ModelError
from ..modelcard import ModelCard
from .base import Engine, EngineOptions, RunSettings, check_card

Loader = Callable[[ModelCard, Any, RunSettings], Engine]
L = TypeVar("L", bound=Loader)


@dataclass(frozen=True)
class EngineEntry:
    name: str
    options: type[EngineOptions]
    """The engine's strict options model: the keys of an infer stage's params it reads."""
    load: Loader
    """``load(card, options, settings)``: blocking; raises ``ModelError`` for a model it cannot run."""


_ENGINES: dict[str, EngineEntry] = {}


class UnknownEngine(KeyError):
    """No engine is registered under this name; the message lists those that are."""

    def __init__(self, name: str) -> None:
        self.name = name
        close = did_you_mean(name, engine_names())
        super().__init__(f"unknown engine {name!r}{close}; available: {', '.join(engine_names())}")

    def __str__(self) -> str:
        return str(self.args[0])


def register_engine(name: str, options: type[EngineOptions]) -> Callable[[L], L]:
    """Decorator: ``loader`` (an Engine class or a function of the same signature) serves ``name``."""

    def decorate(loader: L) -> L:
        if name in _ENGINES and _ENGINES[name].load is not loader:
            raise ValueError(f"engine {name!r} is registered twice")
        _ENGINES[name] = EngineEntry(name, options, loader)
        return loader

    return decorate


def engine_names() -> list[str]:
    return sorted(_ENGINES)


def engine_entry(name: str) -> EngineEntry:
    try:
        return _ENGINES[name]
    except KeyError:
        raise UnknownEngine(name) from None


def create_engine(
    name: str, card: ModelCard, options: EngineOptions | None = None, settings: RunSettings | None = None
) -> Engine:
    """Load ``card`` with the engine registered as ``name`` and check the card against what it
    runs. Blocking: callers run it in the thread pool. A remote engine needs ``open`` (on the event
    loop) before it can say what it runs: ``load_engine``, ``await engine.open()``, ``check_engine``."""
    settings = settings or RunSettings()
    engine = load_engine(name, card, options, settings)
    check_engine(engine, settings)
    return engine


def load_engine(name: str, card: ModelCard, options: EngineOptions | None, settings: RunSettings) -> Engine:
    """The engine registered as ``name``, loaded for ``card`` (blocking), not yet checked."""
    entry = engine_entry(name)
    if options is None:
        options = entry.options()
    elif not isinstance(options, entry.options):
        raise TypeError(f"engine {name!r} takes {entry.options.__name__}, not {type(options).__name__}")
    return entry.load(card, options, settings)


def check_engine(engine: Engine, settings: RunSettings) -> None:
    """The card's tensors are the model's (``check_card``), and the model takes the stage's batches."""
    card = engine.card
    metadata = engine.metadata()
    check_card(card, metadata)
    if metadata.max_batch is not None and metadata.max_batch < settings.max_batch:
        raise ModelError(
            f"model {card.name!r} takes batches of at most {metadata.max_batch} on {engine.description}, "
            f"the stage sends up to {settings.max_batch}: lower batch.max_size (or size_limit for auto)"
        )
