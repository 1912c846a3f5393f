"""Objects in frames: YOLO detection (decoding its heads, per-class NMS), multi-object tracking,
and what the tracked objects do (entering, leaving, zones, lines) as events."""

from . import detection as detection
from . import object_events as object_events
from . import tracking as tracking
