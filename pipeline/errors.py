"""The error hierarchy: one root, and each error also inherits the matching builtin (as PyAV does)."""

from __future__ import annotations


class PipelineError(Exception):
    """Root of every error streamgraph raises on purpose."""


class ConfigError(PipelineError, ValueError):
    """A pipeline or model card is wrong; ``path`` names the YAML location at fault."""

    def __init__(self, path: str, message: str, *, source: str | None = None) -> None:
        self.path = path
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{path}: {message}" if path else f"{where}{message}")


class ModelError(PipelineError, RuntimeError):
    """A model could not be fetched, verified or loaded; names the model card."""


class EngineError(PipelineError, RuntimeError):
    """An engine could not run one batch: its server is down or refused it, or answered with
    tensors the model card does not describe. Fails that batch's items (counted as
    ``error:engine:<stage>``), never the process."""


class StreamError(PipelineError, RuntimeError):
    """One stream failed (unreadable file, corrupt media); ends that stream only."""

    def __init__(self, stream_id: str, message: str) -> None:
        self.stream_id = stream_id
        self.message = message
        super().__init__(f"stream {stream_id!r}: {message}")


class BusError(PipelineError, ConnectionError):
    """The message bus could not be started or reached."""
