"""Objects in frames: YOLO detection (decoding its heads, per-class NMS), multi-object tracking,
what the tracked objects do (entering, leaving, zones, lines) as events, and a second model run
on the new or changed tracks only, its answers kept per track."""

from . import detection as detection
from . import object_events as object_events
from . import track_attributes as track_attributes
from . import track_crops as track_crops
from . import tracking as tracking
