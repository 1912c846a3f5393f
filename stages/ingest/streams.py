"""``streams``: a source whose streams are added and removed while the pipeline runs.

Each stream is a child source picked by its URI (``rtsp://`` -> ``rtsp``, ``whip:`` -> ``whip``, a
path -> ``file``) with the stream's ``options`` as its parameters; every child feeds the stages
this one feeds. Streams listed in the YAML start with the pipeline; the HTTP API and the NATS
control subjects add and remove others (``pipeline.control``). A child that fails ends only its
own stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from pipeline.config import join_path
from pipeline.control import (
    BadStreamRequest,
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
from pipeline.media import Message
from pipeline.sourcerun import run_source
from pipeline.stage import (
    Source,
    StageParams,
    build_stage,
    register_stage,
    registered_types,
    source_class_for_uri,
)

Emit = Callable[[Message], Awaitable[None]]

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


@register_stage("streams")
class StreamSet(StreamHost):
    Params = StreamsParams
    params: StreamsParams

    def __init__(self, name: str, params: StreamsParams) -> None:
        super().__init__(name, params)
        self._children: dict[str, _Child] = {}
        self._emit: Emit | None = None
        self._group: asyncio.TaskGroup | None = None
        self._changed = asyncio.Event()
        self._ended = False

    def check(self, base_dir: Path) -> None:
        for index, entry in enumerate(self.params.streams):
            self._child_source(entry.id, entry.uri, entry.options, f"params.streams[{index}]")

    def _child_source(self, stream_id: str, uri: str, options: dict[str, Any], path: str) -> Source:
        try:
            cls = source_class_for_uri(uri)
        except ConfigError as exc:
            raise ConfigError(join_path(path, "uri"), exc.message) from None
        raw = cls.params_for_uri(stream_id, uri, options)
        source = build_stage(cls, f"{self.name}:{stream_id}", raw, params_path=join_path(path, "options"))
        assert isinstance(source, Source)  # source_class_for_uri gives source classes only
        return source

    async def run(self, emit: Emit) -> None:
        self._emit = emit
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                for index, entry in enumerate(self.params.streams):
                    await self._launch(entry.id, entry.uri, entry.options, f"params.streams[{index}]")
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
        child = self._children.get(stream_id)
        if child is not None:
            child.source.stop_stream(stream_id, reason)

    async def add_stream(self, spec: StreamSpec) -> Source:
        if self.stopping.is_set() or self._ended or self._group is None:
            raise StreamHostUnavailable(f"source {self.name} is not taking streams (stopping or not started)")
        if spec.id in self._children:
            raise StreamExists(f"stream {spec.id!r} already exists")
        if len(self._children) >= self.params.max_streams:
            raise StreamLimitReached(f"source {self.name} already runs max_streams={self.params.max_streams}")
        try:
            return await self._launch(spec.id, spec.uri, spec.options, "")
        except ConfigError as exc:
            raise BadStreamRequest(str(exc)) from None

    async def remove_stream(self, stream_id: str) -> None:
        child = self._children.get(stream_id)
        if child is None:
            raise StreamNotFound(f"no stream {stream_id!r}")
        child.removing = True
        child.source.request_stop()
        try:
            await asyncio.wait_for(child.done.wait(), REMOVE_WAIT_S)
        except TimeoutError:
            self.ctx.logger.warning("stream %s: still ending %.0f s after its removal", stream_id, REMOVE_WAIT_S)

    def describe_streams(self) -> list[dict[str, Any]]:
        return [
            {
                "id": child.stream_id,
                "uri": redact(child.uri),
                "type": child.type,
                "state": "stopping" if child.removing or child.source.stopping.is_set() else "running",
            }
            for child in self._children.values()
        ]

    async def _launch(self, stream_id: str, uri: str, options: dict[str, Any], path: str) -> Source:
        assert self._group is not None and self._emit is not None
        source = self._child_source(stream_id, uri, options, path)
        ctx = dataclasses.replace(self.ctx, logger=logging.getLogger(f"streamgraph.stage.{self.name}.{stream_id}"))
        await source.start(ctx)
        type_name = next((name for name, cls in registered_types().items() if cls is type(source)), "?")
        child = _Child(stream_id, uri, type_name, source)
        self._children[stream_id] = child
        child.task = self._group.create_task(self._run_child(child, self._emit), name=f"stream:{stream_id}")
        self.ctx.logger.info("stream %s added (%s)", stream_id, redact(uri))
        return source

    async def _run_child(self, child: _Child, emit: Emit) -> None:
        try:
            await run_source(child.source, emit, self.ctx.stats, child.source.name)
        finally:
            try:
                await child.source.stop()
            except Exception:
                self.ctx.logger.exception("stream %s: its source failed to stop cleanly", child.stream_id)
            del self._children[child.stream_id]
            child.done.set()
            self._changed.set()
