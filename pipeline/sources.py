"""``streamgraph run <config> --source <uri>``: any shipped pipeline on one's own media. The
config's source stage is replaced by a ``streams`` source holding one stream per ``--source``
(a file path, relative to the current directory; ``rtsp://``; an ``http(s)://`` URL FFmpeg
opens), under the same stage name, so
every stage that read the old source reads these; the run ends when they all have."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from .config import PipelineConfig, StageConfig, stream_id_from
from .errors import ConfigError

KEPT_PARAMS = ("tracks",)
"""Params of the replaced source that every source type takes, kept for the new streams: a
pipeline made for video and audio (``tracks: [video, audio]``) still gets both."""

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def with_sources(config: PipelineConfig, uris: Sequence[str]) -> PipelineConfig:
    """``config`` with its one source stage replaced by a ``streams`` source of ``uris``."""
    sources = [stage for stage in config.stages if not stage.inputs]
    if len(sources) != 1:
        names = ", ".join(stage.name for stage in sources)
        raise ConfigError("--source", f"replaces a pipeline's one source stage; this one has {len(sources)}: {names}")
    (old,) = sources
    options = {key: old.params[key] for key in KEPT_PARAMS if key in old.params}
    streams = [
        {"id": stream_id, "uri": _absolute(uri), "options": {**options, **device_options(uri)}}
        for stream_id, uri in zip(stream_ids(uris), uris, strict=True)
    ]
    new = StageConfig(name=old.name, type="streams", params={"streams": streams, "stay_open": False})
    stages = [new if stage is old else stage for stage in config.stages]
    return config.model_copy(update={"stages": stages})


def device_options(uri: str) -> dict[str, str]:
    """A Linux camera (``/dev/video0``) opens with FFmpeg's ``v4l2`` format, and is live."""
    return {"format": "v4l2", "rate": "native"} if re.fullmatch(r"/dev/video\d+", uri) else {}


def _absolute(uri: str) -> str:
    """A path as the shell that gave it meant it (from the current directory, not the config's)."""
    return uri if _SCHEME.match(uri) else str(Path(uri).expanduser().resolve())


def stream_ids(uris: Sequence[str]) -> list[str]:
    """One distinct stream id per URI: its last path segment without the extension (``cam.mp4``
    -> ``cam``, ``rtsp://cam/live/front`` -> ``front``); ``-2``, ``-3``... where two would clash."""
    ids: list[str] = []
    for uri in uris:
        path = _SCHEME.sub("", uri).split("?", 1)[0].rstrip("/")
        base = stream_id_from(PurePosixPath(path).stem, "stream")
        stream_id, n = base, 2
        while stream_id in ids:
            stream_id, n = f"{base}-{n}", n + 1
        ids.append(stream_id)
    return ids
