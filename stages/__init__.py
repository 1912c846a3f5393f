"""Stage implementations, by family. Importing this package registers every built-in stage type.

A stage module imports the runtime (``pipeline``) and modules of its own family, never another
family's: what flows between stages lives in the runtime (``pipeline.media``, ``pipeline.tensors``).
"""

from . import audio, decode, infer, ingest, join, objects, out, publish, text, vision

__all__ = ["audio", "decode", "infer", "ingest", "join", "objects", "out", "publish", "text", "vision"]
