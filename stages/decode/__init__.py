"""Compressed packets to frames and audio: PyAV (FFmpeg) on the CPU, NVDEC on the GPU."""

from . import audio_decode as audio_decode
from . import decode as decode
