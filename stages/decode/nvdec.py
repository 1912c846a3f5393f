"""Decoding on the GPU with NVDEC (PyNvVideoCodec): packets in, BGR frames in device memory out.

The demuxed packets are converted to Annex B (``stages.annexb``) and handed to a PyNvVideoCodec
decoder that keeps its output in device memory; each NV12 surface becomes a BGR CuPy array
(``stages.colorspace``) without visiting the host. ``decode`` picks this path with
``device: gpu`` (and ``auto``, where ``pipeline.capabilities.nvdec`` finds it usable and a stage
it feeds runs on the GPU); codecs NVDEC does not take here fall back to the CPU decoder, with a
log line saying so.

Each decoder works on a CUDA stream of its own (PyNvVideoCodec then needs the context too: the
device's primary context, the one CuPy uses), so one stream's decode never waits for another's
work, and the decoder never synchronizes the whole device. A frame leaves complete: its
conversion is synchronized on that stream before it is handed on.

Written against PyNvVideoCodec 2.2's Python API (``CreateDecoder``, ``PacketData``, ``Decode``,
DLPack frames, ``GetWidth``/``GetHeight``) and NOT run on a GPU yet: see docs/gpu.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.capabilities import NVDEC_CODECS, nvdec
from pipeline.media import VideoCodecParams, VideoFrame

from .annexb import AnnexB
from .colorspace import nv12_to_bgr


def nvdec_unusable(codec: str | None = None) -> str | None:
    """Why NVDEC cannot decode (``codec``) here, or None if it can (``streamgraph doctor``
    prints the same check)."""
    return nvdec(codec).problem


def primary_context(gpu: int) -> int:
    """The handle of device ``gpu``'s primary CUDA context (the one CuPy and the runtime API use)."""
    from cuda.bindings import driver

    from pipeline.engines.cuda import cuda_check

    cuda_check(driver.cuInit(0))
    _, device = cuda_check(driver.cuDeviceGet(gpu))
    _, context = cuda_check(driver.cuDevicePrimaryCtxRetain(device))
    return int(context)


class NvdecDecoder:
    """One stream's NVDEC decoder. Blocking: ``decode`` and ``flush`` run in the thread pool."""

    def __init__(self, video: VideoCodecParams, gpu: int = 0) -> None:
        import cupy
        import PyNvVideoCodec as nvc

        self._cupy = cupy
        self._nvc = nvc
        self._annexb = AnnexB(video.codec, video.extradata)
        self._size = (video.width, video.height)
        """The demuxer's (width, height): what a frame has until the decoder reports its own."""
        with cupy.cuda.Device(gpu):
            self._stream = cupy.cuda.Stream(non_blocking=True)
        self._decoder = nvc.CreateDecoder(
            gpuid=gpu,
            codec=getattr(nvc.cudaVideoCodec, NVDEC_CODECS[video.codec]),
            cudacontext=primary_context(gpu),
            cudastream=self._stream.ptr,
            usedevicememory=True,
        )
        self._matrix = "bt601"  # as the CPU path's conversion takes an untagged frame

    def decode(
        self, payload: bytes, pts: int, keyframe: bool, time_base: Any, wanted: Callable[[int], bool]
    ) -> list[VideoFrame | int]:
        """The frames this packet completes; a frame not ``wanted`` (its latency budget spent) is
        only its pts, never converted."""
        data = np.frombuffer(self._annexb.convert(bytes(payload), keyframe=keyframe), dtype=np.uint8)
        return self._frames(self._decoder.Decode(self._packet(data, pts)), time_base, wanted)

    def flush(self, time_base: Any, wanted: Callable[[int], bool]) -> list[VideoFrame | int]:
        """The frames still held for reordering (an empty packet ends the stream)."""
        return self._frames(self._decoder.Decode(self._packet(np.zeros(0, np.uint8), 0)), time_base, wanted)

    def _packet(self, data: np.ndarray, pts: int) -> Any:
        packet = self._nvc.PacketData()
        # PyNvVideoCodec releases name the buffer fields differently.
        pointer, length = ("bsl_data", "bsl") if hasattr(packet, "bsl_data") else ("data", "size")
        setattr(packet, pointer, int(data.ctypes.data))
        setattr(packet, length, int(data.size))
        packet.pts = pts
        return packet  # ``data`` must stay alive until Decode returns: the caller holds it

    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the pictures, as the decoder reports them once it has parsed the
        sequence header. The NV12 surface has ``int(height * 1.5)`` rows, so the height cannot
        be read back from it for odd heights."""
        get_width, get_height = (getattr(self._decoder, name, None) for name in ("GetWidth", "GetHeight"))
        if get_width is None or get_height is None:  # not in this release: the demuxer's size
            return self._size
        width, height = get_width(), get_height()
        return (int(width), int(height)) if width and height else self._size

    def _frames(self, decoded: Any, time_base: Any, wanted: Callable[[int], bool]) -> list[VideoFrame | int]:
        cupy = self._cupy
        frames: list[VideoFrame | int] = []
        for surface in decoded:
            pts = int(surface.getPTS()) if hasattr(surface, "getPTS") else 0
            if not wanted(pts):
                frames.append(pts)
                continue
            width, height = self.frame_size()
            with self._stream:  # DLPack orders our stream after the decoder's work on the surface
                nv12 = cupy.from_dlpack(surface)
                if nv12.ndim == 3:  # some releases add a channel axis of 1
                    nv12 = nv12[..., 0]
                bgr = nv12_to_bgr(nv12, height, width, self._matrix, xp=cupy)
            # The surface goes back to the decoder's pool and the frame to other streams' work:
            # the conversion must be finished first.
            self._stream.synchronize()
            frames.append(VideoFrame(data=bgr, pts=pts, time_base=time_base, width=width, height=height))
        return frames
