"""Audio models' post-processing: speech segments from voice activity."""

from . import speech_segments as speech_segments
