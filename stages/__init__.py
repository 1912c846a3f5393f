"""Stage implementations. Importing this package registers every built-in stage type."""

from . import decode, infer, publish, sources, textcrop, textdet, textrec, vision

__all__ = ["decode", "infer", "publish", "sources", "textcrop", "textdet", "textrec", "vision"]
