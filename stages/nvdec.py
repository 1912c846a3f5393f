"""Decoding on the GPU with NVDEC (PyNvVideoCodec): packets in, BGR frames in device memory out.

The demuxed packets are converted to Annex B (``stages.annexb``) and handed to a PyNvVideoCodec
decoder that keeps its output in device memory; each NV12 surface becomes a BGR CuPy array
(``stages.colorspace``) without visiting the host. ``decode`` picks this path with
``device: gpu`` (and ``auto``, where PyNvVideoCodec, CuPy and a GPU are there); codecs NVDEC does
not take here fall back to the CPU decoder, with a log line saying so.

Written against PyNvVideoCodec's documented Python API (``CreateDecoder``, ``PacketData``,
``Decode``, DLPack frames) and NOT run on a GPU yet: see the README's GPU section.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from pipeline.media import VideoCodecParams, VideoFrame

from .annexb import AnnexB
from .colorspace import nv12_to_bgr

NVDEC_CODECS = {"h264": "H264", "hevc": "HEVC"}
"""Our codec names -> PyNvVideoCodec's ``cudaVideoCodec`` members."""


def nvdec_unusable(codec: str | None = None) -> str | None:
    """Why NVDEC cannot decode (``codec``) here, or None if it can."""
    if codec is not None and codec not in NVDEC_CODECS:
        return f"NVDEC does not take {codec!r} here (only {', '.join(NVDEC_CODECS)})"
    missing = [m for m in ("PyNvVideoCodec", "cupy") if importlib.util.find_spec(m) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (pip install -e '.[gpu]')"
    from pipeline.engines import cuda_device_unusable

    return cuda_device_unusable()


class NvdecDecoder:
    """One stream's NVDEC decoder. Blocking: ``decode`` and ``flush`` run in the thread pool."""

    def __init__(self, video: VideoCodecParams, gpu: int = 0) -> None:
        import cupy
        import PyNvVideoCodec as nvc

        self._cupy = cupy
        self._nvc = nvc
        self._annexb = AnnexB(video.codec, video.extradata)
        self._decoder = nvc.CreateDecoder(
            gpuid=gpu,
            codec=getattr(nvc.cudaVideoCodec, NVDEC_CODECS[video.codec]),
            cudacontext=0,
            cudastream=0,
            usedevicememory=True,
        )
        self._matrix = "bt601"  # as the CPU path's conversion takes an untagged frame

    def decode(self, payload: bytes, pts: int, keyframe: bool, time_base: Any) -> list[VideoFrame]:
        data = np.frombuffer(self._annexb.convert(bytes(payload), keyframe=keyframe), dtype=np.uint8)
        return self._frames(self._decoder.Decode(self._packet(data, pts)), time_base)

    def flush(self, time_base: Any) -> list[VideoFrame]:
        """The frames still held for reordering (an empty packet ends the stream)."""
        return self._frames(self._decoder.Decode(self._packet(np.zeros(0, np.uint8), 0)), time_base)

    def _packet(self, data: np.ndarray, pts: int) -> Any:
        packet = self._nvc.PacketData()
        # PyNvVideoCodec releases name the buffer fields differently.
        pointer, length = ("bsl_data", "bsl") if hasattr(packet, "bsl_data") else ("data", "size")
        setattr(packet, pointer, int(data.ctypes.data))
        setattr(packet, length, int(data.size))
        packet.pts = pts
        return packet  # ``data`` must stay alive until Decode returns: the caller holds it

    def _frames(self, decoded: Any, time_base: Any) -> list[VideoFrame]:
        cupy = self._cupy
        frames = []
        for surface in decoded:
            nv12 = cupy.from_dlpack(surface)
            if nv12.ndim == 3:  # some releases add a channel axis of 1
                nv12 = nv12[..., 0]
            height, width = nv12.shape[0] * 2 // 3, nv12.shape[1]
            bgr = nv12_to_bgr(nv12, height, width, self._matrix, xp=cupy)
            pts = int(surface.getPTS()) if hasattr(surface, "getPTS") else 0
            frames.append(VideoFrame(data=bgr, pts=pts, time_base=time_base, width=width, height=height))
        return frames
