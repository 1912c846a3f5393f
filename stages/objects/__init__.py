"""Objects in frames: YOLO detection (decoding its heads, per-class NMS)."""
