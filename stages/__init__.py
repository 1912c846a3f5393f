"""Stage implementations. Importing this package registers every built-in stage type."""

from . import audio, decode, infer, join, publish, rtsp, sources, streams, textcrop, textdet, textrec, vad, vision, whip

__all__ = [
    "audio",
    "decode",
    "infer",
    "join",
    "publish",
    "rtsp",
    "sources",
    "streams",
    "textcrop",
    "textdet",
    "textrec",
    "vad",
    "vision",
    "whip",
]
