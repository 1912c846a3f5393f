"""``streams``: a source whose streams are added and removed while the pipeline runs.

Each stream is a child source picked by its URI (``rtsp://`` -> ``rtsp``, ``whip:`` -> ``whip``, a
path -> ``file``) with the stream's ``options`` as its parameters; every child feeds the stages
this one feeds. Streams listed in the YAML start with the pipeline; the HTTP API and the NATS
control subjects add and remove others (``pipeline.control``). A child that fails ends only its
own stream.

What can be known before a stream starts is checked when it is added (``Stage.check``: a file
that does not exist, say), so the request is refused with the reason. A stream that fails later
(its source ends it with an error, or a stage downstream gives up on it) stays listed as
``state: failed`` with its ``error``: the last ``keep_failed`` of them, each for at most
``keep_failed_s`` seconds, and is counted in ``streamgraph_streams_failed_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from pipeline.config import join_path
from pipeline.control import (
    FAILED,
    BadStreamRequest,
    MediaNotAllowed,
    StreamEntry,
    StreamExists,
    StreamHost,
    StreamHostUnavailable,
    StreamLimitReached,
    StreamNotFound,
    StreamSpec,
)
from pipeline.errors import ConfigError
from pipeline.logs import redact
from pipeline.media import EndOfStream, Message
from pipeline.sourcerun import run_source
from pipeline.stage import (
    Source,
    StageParams,
    build_stage,
    register_stage,
    registered_types,
    source_class_for_uri,
)

from .whip import WhipSource

START_WAIT_S = 5.0
"""How long a stream added as the pipeline starts waits for this source to begin running."""

Emit = Callable[[Message], Awaitable[None]]

MEDIA_NOT_ALLOWED = (
    "uri: not a file a stream added at run time may read (only files under api.media_roots or the config's directory)"
)
"""The one refusal for every local path outside the media roots: it never tells whether the path
exists, or what the server has."""

REMOVE_WAIT_S = 10.0
"""How long ``remove_stream`` waits for a child to end its stream before answering anyway."""


class StreamsParams(StageParams):
    streams: list[StreamEntry] = Field(default_factory=list)
    """Streams that start with the pipeline."""
    stay_open: bool = True
    """Keep running, ready for streams added at run time, when no stream is left (a service);
    false: this source ends with its last stream (the pipeline ends when every source has)."""
    max_streams: int = Field(default=64, ge=1)
    """Streams running at once; adding one more is refused (``StreamLimitReached``)."""
    keep_failed: int = Field(default=32, ge=0)
    """How many failed streams stay listed (``state: failed``, with the error); the oldest go first."""
    keep_failed_s: float = Field(default=600.0, gt=0)
    """How long a failed stream stays listed at most."""

    @field_validator("streams")
    @classmethod
    def _distinct_ids(cls, streams: list[StreamEntry]) -> list[StreamEntry]:
        ids = [entry.id for entry in streams]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"stream ids must be distinct; repeated: {', '.join(duplicates)}")
        return streams


@dataclass
class _Child:
    stream_id: str
    uri: str
    type: str
    source: Source
    task: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    removing: bool = False
    error: str | None = None
    """Why the stream failed: its source ended it with this error, or a stage gave up on it."""


@dataclass(frozen=True)
class _Failed:
    """A stream that ended with an error, kept to be listed for a while."""

    stream_id: str
    uri: str
    type: str
    error: str
    ended_at: float
    """Unix time."""
    listed_until: float
    """Monotonic time."""


@register_stage("streams")
class StreamSet(StreamHost):
    Params = StreamsParams
    params: StreamsParams

    def __init__(self, name: str, params: StreamsParams) -> None:
        super().__init__(name, params)
        self._children: dict[str, _Child] = {}
        self._emit: Emit | None = None
        self._group: asyncio.TaskGroup | None = None
        self._running = asyncio.Event()
        """Set once ``run`` has begun: a stream added just before waits for it (START_WAIT_S)."""
        self._changed = asyncio.Event()
        self._ended = False
        self._failed: deque[_Failed] = deque(maxlen=params.keep_failed)

    def check(self, base_dir: Path) -> None:
        # Every entry's URI and options first, then what each needs from the machine (its file):
        # a typo anywhere is reported before a missing file.
        paths = [f"params.streams[{index}]" for index in range(len(self.params.streams))]
        children = [
            self._child_source(entry.id, entry.uri, entry.options, path)
            for entry, path in zip(self.params.streams, paths, strict=True)
        ]
        for entry, path, source in zip(self.params.streams, paths, children, strict=True):
            _check_child(source, entry.options, path, base_dir)

    def _child_source(self, stream_id: str, uri: str, options: dict[str, Any], path: str) -> Source:
        try:
            cls = source_class_for_uri(uri)
        except ConfigError as exc:
            raise ConfigError(join_path(path, "uri"), exc.message) from None
        try:
            raw = cls.params_for_uri(stream_id, uri, options)
        except ConfigError as exc:
            raise ConfigError(join_path(path, exc.path), exc.message) from None
        source = build_stage(cls, f"{self.name}:{stream_id}", raw, params_path=join_path(path, "options"))
        assert isinstance(source, Source)  # source_class_for_uri gives source classes only
        if isinstance(source, WhipSource):
            source.hosted = True  # its check refuses a WHIP source that is a stage of its own
        return source

    async def run(self, emit: Emit) -> None:
        self._emit = emit
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                self._running.set()
                for index, entry in enumerate(self.params.streams):
                    source = self._child_source(entry.id, entry.uri, entry.options, f"params.streams[{index}]")
                    await self._launch(entry.id, entry.uri, source)
                while not self.stopping.is_set() and (self.params.stay_open or self._children):
                    self._changed.clear()
                    await self._changed.wait()
                # Stopping: every child ends its stream (drain), then the group has no task left.
        finally:
            self._ended = True
            self._group = None

    def request_stop(self) -> None:
        super().request_stop()
        for child in self._children.values():
            child.source.request_stop()
        self._changed.set()

    def stop_stream(self, stream_id: str, reason: str) -> None:
        # Asked only when a stage downstream gave up on the stream: ``reason`` is its error.
        child = self._children.get(stream_id)
        if child is not None:
            child.error = child.error or reason
            child.source.stop_stream(stream_id, reason)

    async def add_stream(self, spec: StreamSpec) -> Source:
        if self._group is None and not (self.stopping.is_set() or self._ended):
            # Asked for as the pipeline starts (the Python API right after start(), a POST as the
            # server comes up): the source's task is about to run.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._running.wait(), timeout=START_WAIT_S)
        if self.stopping.is_set() or self._ended or self._group is None:
            raise StreamHostUnavailable(f"source {self.name} is not taking streams (stopping or not started)")
        if spec.id in self._children:
            raise StreamExists(f"stream {spec.id!r} already exists")
        if len(self._children) >= self.params.max_streams:
            raise StreamLimitReached(f"source {self.name} already runs max_streams={self.params.max_streams}")
        source = self._checked_child(spec)
        launched = await self._launch(spec.id, spec.uri, source)
        # Marked before its first message can arrive (nothing awaited since the launch): its
        # failure is its own, never the run's (``streamgraph run``'s exit code).
        self.ctx.stats.stream(spec.id).added_at_run_time = True
        return launched

    def check_stream(self, spec: StreamSpec) -> None:
        self._checked_child(spec)

    def _checked_child(self, spec: StreamSpec) -> Source:
        """The source ``spec`` asks for, built and checked (its URI, options, media roots, file)."""
        try:
            source = self._child_source(spec.id, spec.uri, spec.options, "")
        except ConfigError as exc:
            raise BadStreamRequest(str(exc)) from None
        # Before ``check``: its errors would tell whether a path outside the roots exists.
        self._refuse_outside_media_roots(source)
        try:
            _check_child(source, spec.options, "", self.ctx.base_dir)
        except ConfigError as exc:
            raise BadStreamRequest(str(exc)) from None
        return source

    def _refuse_outside_media_roots(self, source: Source) -> None:
        roots = self.ctx.media_roots or (self.ctx.base_dir.resolve(),)
        for path in source.local_files(self.ctx.base_dir):
            try:
                real = Path(os.path.realpath(path))  # symlinks and ``..`` resolved: where it really is
            except (OSError, ValueError):
                real = None
            if real is None or not any(real.is_relative_to(root) for root in roots):
                raise MediaNotAllowed(MEDIA_NOT_ALLOWED)

    async def remove_stream(self, stream_id: str) -> None:
        child = self._children.get(stream_id)
        if child is None:
            if self._forget_failed(stream_id):
                return
            raise StreamNotFound(f"no stream {stream_id!r}")
        child.removing = True
        child.source.request_stop()
        try:
            await asyncio.wait_for(child.done.wait(), REMOVE_WAIT_S)
        except TimeoutError:
            self.ctx.logger.warning("stream %s: still ending %.0f s after its removal", stream_id, REMOVE_WAIT_S)

    def describe_streams(self) -> list[dict[str, Any]]:
        running = [
            {
                "id": child.stream_id,
                "uri": redact(child.uri),
                "type": child.type,
                "state": "stopping" if child.removing or child.source.stopping.is_set() else "running",
            }
            for child in self._children.values()
        ]
        failed = [
            {
                "id": gone.stream_id,
                "uri": redact(gone.uri),
                "type": gone.type,
                "state": FAILED,
                "error": gone.error,
                "ended_at": round(gone.ended_at, 3),
            }
            for gone in self._failed_now()
        ]
        return running + failed

    def _failed_now(self) -> list[_Failed]:
        now = time.monotonic()
        while self._failed and self._failed[0].listed_until <= now:
            self._failed.popleft()
        return list(self._failed)

    def _forget_failed(self, stream_id: str) -> bool:
        kept = [gone for gone in self._failed if gone.stream_id != stream_id]
        forgot = len(kept) < len(self._failed)
        self._failed = deque(kept, maxlen=self.params.keep_failed)
        return forgot

    def _remember_failed(self, child: _Child, error: str) -> None:
        if self.params.keep_failed:
            listed_until = time.monotonic() + self.params.keep_failed_s
            self._failed.append(_Failed(child.stream_id, child.uri, child.type, error, time.time(), listed_until))
        self.ctx.metrics.count_stream_failed(self.name)

    async def _launch(self, stream_id: str, uri: str, source: Source) -> Source:
        assert self._group is not None and self._emit is not None
        ctx = dataclasses.replace(self.ctx, logger=logging.getLogger(f"streamgraph.stage.{self.name}.{stream_id}"))
        await source.start(ctx)
        type_name = next((name for name, cls in registered_types().items() if cls is type(source)), "?")
        child = _Child(stream_id, uri, type_name, source)
        self._children[stream_id] = child
        self._forget_failed(stream_id)  # its new run is what the id stands for now
        child.task = self._group.create_task(self._run_child(child, self._emit), name=f"stream:{stream_id}")
        self.ctx.logger.info("stream %s added (%s)", stream_id, redact(uri))
        return source

    async def _run_child(self, child: _Child, emit: Emit) -> None:
        async def watching(message: Message) -> None:
            if isinstance(message, EndOfStream) and message.reason == "error":
                child.error = child.error or message.error or "unknown error"
            await emit(message)

        try:
            await run_source(child.source, watching, self.ctx.stats, child.source.name)
        finally:
            try:
                await child.source.stop()
            except Exception:
                self.ctx.logger.exception("stream %s: its source failed to stop cleanly", child.stream_id)
            del self._children[child.stream_id]
            if child.error is not None:
                self._remember_failed(child, child.error)
            child.done.set()
            self._changed.set()


def _check_child(source: Source, options: dict[str, Any], path: str, base_dir: Path) -> None:
    """``source.check``, its error put where the stream entry says it: at ``options.<key>`` when
    the value at fault is the option's, else at ``uri`` (which the source's other params, its
    ``path`` or ``url``, came from)."""
    try:
        source.check(base_dir)
    except ConfigError as exc:
        within = exc.path.removeprefix("params.")
        key = within.partition(".")[0].partition("[")[0]
        from_options = key in options and getattr(source.params, key, None) == options[key]
        raise ConfigError(join_path(path, f"options.{within}" if from_options else "uri"), exc.message) from None
