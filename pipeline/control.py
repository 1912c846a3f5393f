"""Streams added and removed while a pipeline runs: the operations behind ``/streams`` and the
NATS ``<prefix>.control.streams.*`` subjects.

A pipeline takes streams at run time through a source that hosts them (``type: streams``, a
``StreamHost``): each added stream becomes a child source chosen by its URI's scheme (``rtsp://``
-> ``rtsp``, ``whip:`` -> ``whip``, a path or ``file://`` -> ``file``) and feeds the same stages as
every other stream of that host. Removing a stream stops its child source, which ends the stream
(``ended`` event, reason ``stopped``) like any other; the other streams never notice.

An operation that cannot be done raises a ``StreamControlError`` of a type that says why
(``StreamNotFound``, ``StreamExists``, ``BadStreamRequest``...); the HTTP server
(``pipeline.server.errors``) and the NATS control (``pipeline.control_nats``) each map the types to
their own replies. Nothing here knows about HTTP.

What can be checked when a stream is added is checked then, and refused with the reason (a bad
id, an unknown option, a file that does not exist); what fails later (a file that cannot be
decoded, a camera that never answers) leaves the stream listed for a while as ``state: failed``
with its ``error`` (``StreamHost.describe_streams``).

Stream ids follow one grammar (``pipeline.config.STREAM_ID_PATTERN``): an id is one token of the
NATS subjects its results go to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection
from typing import Any, Protocol

from pydantic import Field, ValidationError, field_validator

from .config import STREAM_ID_PATTERN, StrictModel, config_error_from, stream_id_problem
from .errors import PipelineError
from .stage import Source

RESERVED_OPTIONS = {"id": "id", "path": "uri", "url": "uri"}
"""Source params a stream's own fields set (option -> the field): given in ``options`` too, they
would be silently overridden, so they are refused (the entry's ``uri`` and ``id`` decide)."""

MAX_JSON_DEPTH = 32
"""How deep a request body may nest (objects and arrays); a stream request needs a handful of
levels. Checked before parsing: a deeper body would take the parser, or whatever reads its
result, to Python's recursion limit."""
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(rb"[\[\]{}]")

FAILED = "failed"
"""The ``state`` of a stream that ended with an error and is still listed, with its ``error``."""


class StreamEntry(StrictModel):
    """One stream: ``{"id": "cam1", "uri": "rtsp://...", "options": {"transport": "udp"}}``."""

    id: str = Field(pattern=STREAM_ID_PATTERN)
    uri: str = Field(min_length=1)
    options: dict[str, Any] = Field(default_factory=dict)
    """Parameters of the source type the URI picks (``rate``, ``loop``, ``transport``...)."""

    @field_validator("options")
    @classmethod
    def _no_option_the_entry_sets(cls, options: dict[str, Any]) -> dict[str, Any]:
        reserved = [key for key in RESERVED_OPTIONS if key in options]
        why = [f"{key!r} is set by the stream's {RESERVED_OPTIONS[key]!r}, not by its options" for key in reserved]
        if why:
            raise ValueError("; ".join(why))
        return options


class StreamSpec(StreamEntry):
    """One stream to add at run time (HTTP, NATS)."""

    source: str | None = None
    """Which ``streams`` stage takes it, where a pipeline has several."""


class StreamControlError(PipelineError):
    """A stream operation that cannot be done; the subclass says why, ``message`` says how."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadStreamRequest(StreamControlError, ValueError):
    """The request itself is wrong: not a JSON object, a bad field or option, an unknown source."""


class StreamNotFound(StreamControlError, LookupError):
    """No running stream has this id."""


class StreamExists(StreamControlError, ValueError):
    """A stream with this id runs already (in any source of the pipeline)."""


class NoStreamHost(StreamControlError, RuntimeError):
    """The pipeline takes no streams at run time: it has no ``type: streams`` source."""


class StreamLimitReached(StreamControlError, RuntimeError):
    """The source runs as many streams as it may (``max_streams``)."""


class MediaNotAllowed(StreamControlError, PermissionError):
    """A stream added at run time would read a local file outside the media roots
    (``api.media_roots`` and the config's own directory). One message for every such path, so
    a refusal never tells whether the path exists."""


class StreamHostUnavailable(StreamControlError, RuntimeError):
    """The source takes no streams now: it is stopping, or has not started."""


def loads_request(data: bytes) -> Any:
    """A request body (HTTP, NATS) parsed as JSON; ``BadStreamRequest`` says why when it is not
    JSON or nests deeper than ``MAX_JSON_DEPTH``."""
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub(b"", data)):  # brackets outside strings
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_JSON_DEPTH:
        raise BadStreamRequest(f"body is not valid JSON: nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadStreamRequest(f"body is not valid JSON: {exc}") from None
    except RecursionError:  # not reached with MAX_JSON_DEPTH well under the limit: a last guard
        raise BadStreamRequest("body is not valid JSON: nested too deeply") from None


class StreamHost(Source):
    """A source whose streams come and go at run time (``type: streams``)."""

    async def add_stream(self, spec: StreamSpec) -> Source:
        """Start the stream; returns the child source that produces it. Raises
        ``StreamExists``, ``StreamLimitReached``, ``StreamHostUnavailable``, or
        ``BadStreamRequest`` for bad options."""
        raise NotImplementedError

    async def remove_stream(self, stream_id: str) -> None:
        """Stop the stream and wait until it has ended; ``StreamNotFound`` if unknown."""
        raise NotImplementedError

    def check_stream(self, spec: StreamSpec) -> None:
        """Everything ``add_stream`` checks about the spec itself (its URI, options, media roots,
        file), without starting it: a cluster checks a stream where it is added, before another
        worker may run it. Raises ``BadStreamRequest`` or ``MediaNotAllowed``."""
        raise NotImplementedError

    def describe_streams(self) -> list[dict[str, Any]]:
        """The streams running now (``[{"id", "uri", "type", "state"}]``, ``state`` ``running`` or
        ``stopping``), and those that failed recently (``state: failed``, with ``error``, the
        reason, and ``ended_at``, a Unix time). ``remove_stream`` of a failed one forgets it."""
        raise NotImplementedError


class StreamOperations(Protocol):
    """What the HTTP API and the NATS control subjects ask of the streams: this process's
    ``StreamControl``, or a cluster's (``pipeline.cluster.control``), which adds to and lists the
    catalog every worker shares."""

    @property
    def available(self) -> bool: ...

    def check_id(self, stream_id: str) -> None: ...

    def is_running(self, stream_id: str) -> bool: ...

    def failure(self, stream_id: str) -> str | None: ...

    def parse(self, body: Any) -> StreamSpec: ...

    async def add(self, spec: StreamSpec) -> object: ...

    async def remove(self, stream_id: str) -> None: ...

    def describe(self, stream_id: str) -> dict[str, Any]: ...

    def list(self) -> list[dict[str, Any]]: ...


class StreamControl:
    """Stream operations on a running graph's stream hosts, for the HTTP server and NATS."""

    def __init__(
        self, hosts: dict[str, StreamHost], *, open_streams: Callable[[], Collection[str]] = frozenset
    ) -> None:
        self._hosts = hosts
        self._open_streams = open_streams
        """Every stream running now, from any source (a YAML ``file`` source's too)."""

    @property
    def available(self) -> bool:
        return bool(self._hosts)

    @staticmethod
    def check_id(stream_id: str) -> None:
        """``BadStreamRequest`` if ``stream_id`` (from a URL path, a request) is not a stream id."""
        problem = stream_id_problem(stream_id)
        if problem:
            raise BadStreamRequest(f"id: {problem}")

    def is_running(self, stream_id: str) -> bool:
        """Whether a stream of this id runs now, in any source (a YAML ``file`` source's too)."""
        return stream_id in self._running_ids() or stream_id in self._open_streams()

    def failure(self, stream_id: str) -> str | None:
        """Why the stream of this id failed, while it is still listed as failed; else None."""
        for stream in self.list():
            if stream["id"] == stream_id and stream["state"] == FAILED:
                return str(stream.get("error", ""))
        return None

    def parse(self, body: Any) -> StreamSpec:
        """A request body as a ``StreamSpec``; ``BadStreamRequest`` names the field at fault."""
        if not isinstance(body, dict):
            raise BadStreamRequest(f"expected a JSON object, got {type(body).__name__}")
        try:
            return StreamSpec.model_validate(body)
        except ValidationError as exc:
            raise BadStreamRequest(str(config_error_from(exc, model=StreamSpec))) from None

    def check(self, spec: StreamSpec) -> None:
        """What adding ``spec`` would refuse at once, without starting it (``StreamHost.check_stream``)."""
        self._host(spec.source).check_stream(spec)

    async def add(self, spec: StreamSpec) -> Source:
        host = self._host(spec.source)
        if self.is_running(spec.id):  # a failed one's id may be used again
            raise StreamExists(f"stream {spec.id!r} already exists")
        return await host.add_stream(spec)

    async def remove(self, stream_id: str) -> None:
        """Stop a running stream and wait until it has ended, or forget a failed one."""
        self.check_id(stream_id)
        for host in self._hosts.values():
            if any(s["id"] == stream_id for s in host.describe_streams()):
                await host.remove_stream(stream_id)
                return
        raise StreamNotFound(f"no stream {stream_id!r}")

    def describe(self, stream_id: str) -> dict[str, Any]:
        """One stream as ``list`` shows it; ``StreamNotFound`` if unknown."""
        self.check_id(stream_id)
        return find_stream(self.list(), stream_id)

    def list(self) -> list[dict[str, Any]]:
        """The streams of every ``streams`` source: running, and failed recently."""
        return [{**stream, "source": name} for name, host in self._hosts.items() for stream in host.describe_streams()]

    def _running_ids(self) -> set[str]:
        return {s["id"] for h in self._hosts.values() for s in h.describe_streams() if s["state"] != FAILED}

    def _host(self, name: str | None) -> StreamHost:
        if not self._hosts:
            raise NoStreamHost("this pipeline takes no streams at run time: give it a source of 'type: streams'")
        if name is None:
            if len(self._hosts) > 1:
                raise BadStreamRequest(f"source: name one of {sorted(self._hosts)}")
            return next(iter(self._hosts.values()))
        host = self._hosts.get(name)
        if host is None:
            raise BadStreamRequest(f"source: no 'streams' stage {name!r}; known: {sorted(self._hosts)}")
        return host


def find_stream(streams: list[dict[str, Any]], stream_id: str) -> dict[str, Any]:
    """The stream of ``stream_id`` in a listing; ``StreamNotFound`` if it is not there."""
    for stream in streams:
        if stream["id"] == stream_id:
            return stream
    raise StreamNotFound(f"no stream {stream_id!r}")


REPLY_STATUS: dict[type[StreamControlError], int] = {
    BadStreamRequest: 400,
    MediaNotAllowed: 403,
    StreamNotFound: 404,
    StreamExists: 409,
    NoStreamHost: 409,
    StreamLimitReached: 409,
    StreamHostUnavailable: 503,
    StreamControlError: 400,  # any other refusal of a stream operation (a third-party StreamHost's)
}
"""The one table from a refused stream operation to the status its reply carries: HTTP's numbers,
which the HTTP API answers with and the NATS control replies carry too (``status``)."""


def reply_status(exc: StreamControlError) -> int:
    """The status of ``exc``: its class's in ``REPLY_STATUS``, else its nearest listed base's."""
    return next(REPLY_STATUS[cls] for cls in type(exc).__mro__ if cls in REPLY_STATUS)
