"""Objects in frames: YOLO detection (decoding its heads, per-class NMS) and multi-object tracking."""

from . import detection as detection
from . import tracking as tracking
