"""The Stage base class, the context stages run in, and the registry of stage types.

A stage declares its parameters as a pydantic model (``Params``), so a config is checked before
anything starts; its code holds only behaviour. Blocking work goes through
``ctx.run_blocking`` (a thread pool sized by ``runtime.threads``): the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, TypeVar

from pydantic import Field, ValidationError, field_validator

from .config import StrictModel, config_error_from, did_you_mean, join_path
from .errors import ConfigError
from .media import EndOfStream, Item, Message, StreamInfo, StreamStatus, TrackKind
from .metrics import Metrics
from .sinks import Sinks
from .stats import StreamStats

if TYPE_CHECKING:
    from .bus import Bus

log = logging.getLogger("streamgraph.stage")

P = ParamSpec("P")
T = TypeVar("T")


class NoParams(StrictModel):
    """For stages that take no parameters."""


class StageParams(StrictModel):
    """Base for stage parameter models; paths are strings resolved by ``ctx.resolve_path``."""


@dataclass
class StageContext:
    """What the runner gives a stage: where it is, shared services, and the thread pool."""

    pipeline: str
    stage: str
    base_dir: Path
    stats: StreamStats
    executor: Executor
    bus: Bus | None = None
    sinks: Sinks = field(default_factory=Sinks)
    """The run's sinks besides NATS: ``publish`` offers them each result and event."""
    input_stages: tuple[str, ...] = ()
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("streamgraph"))
    stop_stream: Callable[[str, str], None] = lambda stream_id, reason: None
    metrics: Metrics = field(default_factory=lambda: Metrics("detached"))
    """The runner's metrics (``observe_batch``, ``observe_published``); a stage started outside a
    runner gets one of its own that nothing scrapes."""
    consumers: tuple[Stage, ...] = ()
    """The stages this one's items go to (a stage may adapt what it hands on to them)."""
    latency_keys: tuple[str, ...] = ()
    """The ``latency_ms`` keys the pipeline's stages report, in graph order (what ``publish`` puts
    in every result besides the runtime's own)."""
    media_roots: tuple[Path, ...] = ()
    """Folders a stream added at run time may read local files from (``api.media_roots``, and
    the config's own directory), resolved."""

    async def run_blocking(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        if kwargs:
            return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))
        return await loop.run_in_executor(self.executor, fn, *args)

    def resolve_path(self, path: str) -> Path:
        """A path from the config, relative to the config file's directory."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else (self.base_dir / candidate)


class Stage:
    """One step of a pipeline. Subclasses set ``Params`` and override the hooks they need.

    ``process`` takes one item and returns the items to pass on (none to consume it, several to
    fan it out, e.g. a decoder). Raising ``StreamError`` ends that item's stream; any other
    exception fails that item only (it is logged and counted as dropped).
    """

    Params: ClassVar[type[StrictModel]] = NoParams
    latency_key: ClassVar[str | None] = None
    """The ``latency_ms`` part that the runner ends (``Item.mark``) when this stage's ``process``
    returns (``prepare``, ``post``, or one of the stage's own); None: the stage ends its own parts,
    and what it does not end is counted as ``ordering``."""
    latency_keys: ClassVar[tuple[str, ...]] = ()
    """Further ``latency_ms`` parts the stage ends itself (``Item.mark(key)``, or ``add_time`` for
    a stretch it timed inside the current part): ``decode`` for a decoder, ``batch_wait`` and
    ``infer`` for a model. A pipeline's results carry every key its stages report
    (``reported_latency_keys``) besides the runtime's own (ingest, queue, blocked, ordering,
    publish, total)."""
    sink: ClassVar[bool] = False
    """Hands results out of the pipeline (``publish``): when it cannot keep up, that is
    backpressure from outside, so frames a full ``drop_oldest`` edge in front of it drops are
    counted as ``backpressure:<stage>``, not ``edge:<stage>``."""

    @classmethod
    def reported_latency_keys(cls) -> tuple[str, ...]:
        """Every ``latency_ms`` key this stage's work counts in."""
        own = (cls.latency_key,) if cls.latency_key else ()
        return tuple(dict.fromkeys(own + cls.latency_keys))

    @property
    def max_in_flight(self) -> int:
        """How many items ``process`` may work on at once. Results still leave in arrival order;
        more than one only helps a stage whose ``process`` waits on shared work (a batcher)."""
        return 1

    def __init__(self, name: str, params: Any) -> None:
        self.name = name
        self.params = params
        self._ctx: StageContext | None = None

    @property
    def ctx(self) -> StageContext:
        if self._ctx is None:
            raise RuntimeError(f"stage {self.name!r} used before start()")
        return self._ctx

    def not_ready(self) -> str | None:
        """Why the stage cannot do its work now (its model's server is down), or None; ``/readyz``
        reports it. Asked any time after ``start``."""
        return None

    def takes_device_arrays(self) -> bool:
        """Whether this stage works on device arrays (``__cuda_array_interface__``) as they come:
        a model on a GPU, or a stage that prepares tensors for one. ``decode: {device: auto}``
        decodes on NVDEC only when a stage it feeds says so (else every frame would be copied
        back to the host). Asked once started (the runner starts consumers first)."""
        return False

    def feeds_the_gpu(self) -> bool:
        """Whether a stage this one feeds takes device arrays (``takes_device_arrays``)."""
        return any(stage.takes_device_arrays() for stage in self.ctx.consumers)

    @classmethod
    def params_model(cls, raw: Any) -> type[StrictModel]:
        """The model that validates this stage's params as written in YAML (``raw``): ``Params``.
        A stage whose keys depend on one of them (``infer``'s on its ``engine``) picks one by it,
        or raises ``ConfigError`` with a path within the params (``engine``)."""
        return cls.Params

    def check(self, base_dir: Path) -> None:
        """Checks beyond parameter types, run by ``validate`` before anything starts (a model card
        exists, say). Raise ``ConfigError`` with a path relative to the stage (``params.model``)."""

    async def start(self, ctx: StageContext) -> None:
        self._ctx = ctx

    async def stop(self) -> None:
        """Release resources; called once, after the last item."""

    async def on_stream_added(self, info: StreamInfo) -> None:
        """A stream begins; called before its first item reaches ``process``."""

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        """A stream ended; return items still held for it (a decoder's last frames)."""
        return ()

    async def on_stream_status(self, status: StreamStatus) -> None:
        """A live source's connection state changed (``connecting``, ``stalled``, ...); called in
        order with the stream's items, once per status even behind several inputs, possibly
        before ``on_stream_added`` (a camera connects before its media is known)."""

    async def on_input_ended(self, eos: EndOfStream) -> None:
        """A stream read through several inputs ended on one of them (``eos.via``) but goes on
        through the others. Called as it arrives, even while items before it are in flight."""

    async def process(self, item: Item) -> Sequence[Item]:
        return (item,)


class Source(Stage):
    """A stage with no inputs: it produces streams until they end or ``stop`` is asked."""

    uri_schemes: ClassVar[tuple[str, ...]] = ()
    """URI schemes this source takes for a stream added at run time (``rtsp``); ``""`` is a bare
    path. Sources that list schemes implement ``params_for_uri``."""
    resumable: ClassVar[bool] = False
    """Takes ``start_s`` (a media time to start at): a cluster resumes a moved stream there."""

    @classmethod
    def params_for_uri(cls, stream_id: str, uri: str, options: dict[str, Any]) -> dict[str, Any]:
        """The parameters (before validation) of one source of this type producing ``uri`` as
        ``stream_id``; ``options`` are the caller's other parameters."""
        raise NotImplementedError(f"{cls.__name__} takes no streams by URI")

    def __init__(self, name: str, params: Any) -> None:
        super().__init__(name, params)
        self.stopping = asyncio.Event()

    async def run(self, emit: Callable[[Message], Awaitable[None]]) -> None:
        raise NotImplementedError

    def request_stop(self) -> None:
        self.stopping.set()

    def stop_stream(self, stream_id: str, reason: str) -> None:
        """A downstream stage gave up on this stream (corrupt media): stop producing it, and
        still end it with an ``EndOfStream`` as every stream a source started must be ended."""

    def local_files(self, base_dir: Path) -> list[Path]:
        """The files on this machine the source would open (a ``file`` source's path): a stream
        added at run time may only read those under the media roots."""
        return []


_REGISTRY: dict[str, type[Stage]] = {}


def register_stage(type_name: str) -> Callable[[type[Stage]], type[Stage]]:
    """Class decorator: make a stage available as ``type: <type_name>`` in YAML."""

    def decorate(cls: type[Stage]) -> type[Stage]:
        existing = _REGISTRY.get(type_name)
        if existing is not None and existing is not cls:
            raise ValueError(f"stage type {type_name!r} is already registered by {existing.__qualname__}")
        _REGISTRY[type_name] = cls
        return cls

    return decorate


def registered_types() -> dict[str, type[Stage]]:
    return dict(_REGISTRY)


def source_class_for_uri(uri: str) -> type[Source]:
    """The registered source type that takes ``uri`` (by its scheme; a bare path is a file)."""
    scheme = uri.partition("://")[0].lower() if "://" in uri else uri.partition(":")[0].lower()
    if ":" not in uri or len(scheme) == 1:  # no scheme, or a Windows drive letter: a path
        scheme = ""
    for cls in _REGISTRY.values():
        if issubclass(cls, Source) and scheme in cls.uri_schemes:
            return cls
    known = sorted(s for c in _REGISTRY.values() if issubclass(c, Source) for s in c.uri_schemes if s)
    raise ConfigError("uri", f"no source takes {scheme or 'bare'!r} URIs; known schemes: {', '.join(known)}")


def stage_class_for(
    type_name: str | None, class_path: str | None, path: str, *, base_dir: Path | None = None
) -> type[Stage]:
    """The class a stage config names, by registered type or ``module:Class`` import path. A
    module is looked for in ``base_dir`` (the config file's directory) first, then on the Python
    path, so ``mystages.py`` beside the YAML needs no ``PYTHONPATH``."""
    if (type_name is None) == (class_path is None):
        raise ConfigError(path, "give exactly one of 'type' or 'class'")
    if type_name is not None:
        cls = _REGISTRY.get(type_name)
        if cls is None:
            known = ", ".join(sorted(_REGISTRY)) or "none registered"
            close = did_you_mean(type_name, _REGISTRY)
            raise ConfigError(f"{path}.type", f"unknown stage type {type_name!r}{close}; known: {known}")
        return cls
    assert class_path is not None
    where = f"{path}.class"
    module_name, _, attr = class_path.partition(":")
    if not module_name or not attr:
        raise ConfigError(where, f"expected 'package.module:Class', got {class_path!r}")
    if module_name.startswith("."):
        raise ConfigError(where, f"expected an absolute module path, got {class_path!r}")
    module = _import_stage_module(module_name, base_dir, where)
    cls = getattr(module, attr, None)
    if cls is None:
        found = sorted(
            n
            for n, v in vars(module).items()
            if isinstance(v, type) and issubclass(v, Stage) and v.__module__ == module.__name__  # not imported ones
        )
        listed = f"; Stage classes there: {', '.join(found)}" if found else "; it defines no Stage class"
        raise ConfigError(where, f"module {module_name!r} ({_module_file(module)}) has no {attr!r}{listed}")
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise ConfigError(where, f"{class_path!r} is not a streamgraph Stage subclass")
    return cls


def _import_stage_module(module_name: str, base_dir: Path | None, where: str) -> ModuleType:
    """Import ``module_name`` with ``base_dir`` first on ``sys.path`` for the time of the import.

    Temporarily, not for good: a config's folder left on ``sys.path`` would shadow modules for the
    rest of the process (a ``utils.py`` or ``json.py`` beside the YAML, for every later import). Not
    ``spec_from_file_location`` either: that loads one file, not a package (``mypkg.stages``), and
    the module could not import its neighbours. What the module imports while it is imported is
    found there too; a package's submodules stay importable later through the package's
    ``__path__``.
    """
    folder = str(base_dir.resolve()) if base_dir is not None else None
    added = folder if folder is not None and folder not in sys.path else None
    if added is not None:
        sys.path.insert(0, added)
        importlib.invalidate_caches()  # the folder's listing may predate a module written since
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            looked = f"in {folder} or on the Python path" if folder is not None else "on the Python path"
            raise ConfigError(where, f"no module {module_name!r} {looked}") from None
        raise ConfigError(where, f"cannot import {module_name!r}: {exc}") from None  # one of its imports
    except ImportError as exc:
        raise ConfigError(where, f"cannot import {module_name!r}: {exc}") from None
    except SyntaxError as exc:  # its message names the file and line
        raise ConfigError(where, f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # the user's module raised while being imported: say where
        log.debug("importing %s failed", module_name, exc_info=exc)
        raised = f"{type(exc).__name__}: {exc}{_raised_at(exc)}"
        raise ConfigError(where, f"importing {module_name!r} raised {raised}") from None
    finally:
        if added is not None:
            sys.path.remove(added)


def _module_file(module: ModuleType) -> str:
    return str(getattr(module, "__file__", None) or "built-in")


def _raised_at(exc: BaseException) -> str:
    """`` (file.py:12)``: the innermost frame of ``exc``'s traceback, where the user's code raised."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f" ({tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})"


class TrackSelection(StageParams):
    """The ``tracks`` parameter every media source takes."""

    tracks: list[TrackKind] = Field(default_factory=lambda: list[TrackKind](["video"]), min_length=1)
    """Which tracks to read (the first of each kind), interleaved as they arrive."""

    @field_validator("tracks")
    @classmethod
    def _distinct(cls, tracks: list[TrackKind]) -> list[TrackKind]:
        if len(set(tracks)) != len(tracks):
            raise ValueError(f"each track at most once, got {tracks}")
        return tracks


def build_stage(cls: type[Stage], name: str, raw: Any, *, params_path: str = "params") -> Stage:
    """One stage from its params as written (YAML, a run-time request): validated by the model the
    class picks for them, then constructed. The one way a stage is built from config, for the
    graph's stages and for streams added at run time; a ``ConfigError`` names the key at fault
    under ``params_path``. ``check`` is the caller's: it needs the config's directory."""
    try:
        model = cls.params_model(raw)
    except ConfigError as exc:
        raise ConfigError(join_path(params_path, exc.path), exc.message) from None
    try:
        params = model.model_validate(raw)
    except ValidationError as exc:
        raise config_error_from(exc, prefix=params_path, model=model) from None
    return cls(name, params)
