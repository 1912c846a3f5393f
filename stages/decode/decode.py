"""``decode``: compressed video packets to BGR frames with PyAV (FFmpeg), in the thread pool.

Packets of other tracks (audio) are consumed without a trace: ``audio_decode`` reads those.

A frame carries its packet's capture time and timings; its ``decode`` time runs from its packet
reaching the decoder to the frame coming out (a B-frame waits there for later references). With
``latency_budget_ms`` a frame already older than that when it comes out is dropped
(``late:<stage>``) without being converted to pixels. Every packet is still decoded: a skipped
packet would break every frame that refers to it, up to the next keyframe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import av
from pydantic import Field

from pipeline.errors import ConfigError, StreamError
from pipeline.media import EncodedPacket, EndOfStream, Item, StreamInfo, VideoFrame, overdue_ms
from pipeline.stage import Stage, StageContext, StageParams, register_stage

from .errors import count_decode_error, open_decoder, reason
from .nvdec import NvdecDecoder, nvdec_unusable


class DecodeParams(StageParams):
    device: Literal["auto", "cpu", "gpu"] = "auto"
    """Where to decode: ``gpu`` is NVDEC (frames stay in device memory), ``auto`` NVDEC where it is
    usable and the CPU elsewhere. Codecs NVDEC does not take are decoded on the CPU (logged)."""
    threads: int = Field(default=0, ge=0)
    """FFmpeg decoder threads per stream; 0 lets FFmpeg choose."""
    max_consecutive_errors: int = Field(default=10, ge=1)
    """Packets in a row that fail to decode before the stream is declared broken."""
    latency_budget_ms: float | None = Field(default=None, gt=0)
    """Frames older than this (since capture) when decoded are dropped, not converted (live)."""
    streams_at_once: int = Field(default=4, ge=1)
    """Streams decoded side by side in the thread pool; one stream's packets always go one at a
    time, in order. 1: one packet of any stream at a time."""


@dataclass(frozen=True, slots=True)
class _Sent:
    """What a frame inherits from its packet."""

    capture_time: float
    timings_ms: dict[str, float]


@dataclass
class _StreamDecoder:
    codec: Any
    time_base: Any = None
    next_seq: int = 0
    errors_in_row: int = 0
    sent: dict[int, _Sent] = field(default_factory=dict)
    """By pts: the packets whose frames have not come out yet."""
    gpu: NvdecDecoder | None = None
    """The NVDEC decoder, when this stream decodes on the GPU (``codec`` is then unused)."""
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while one of the stream's packets decodes: a codec takes its packets one by one, in
    order (the lock is first come, first served, and items start in arrival order)."""


@register_stage("decode")
class Decode(Stage):
    Params = DecodeParams
    params: DecodeParams
    latency_key = None  # measured per frame, from its packet's arrival (see _to_items)
    latency_keys = ("decode",)

    def __init__(self, name: str, params: DecodeParams) -> None:
        super().__init__(name, params)
        self._streams: dict[str, _StreamDecoder] = {}

    @property
    def max_in_flight(self) -> int:
        # One decode stage serves every stream: one packet at a time, it would be the bottleneck
        # of many streams long before the cores are.
        return self.params.streams_at_once

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self._gpu_problem = None if self.params.device == "cpu" else nvdec_unusable()
        if self.params.device == "gpu" and self._gpu_problem is not None:
            raise ConfigError(
                f"stage {self.name}", f"params.device is gpu, but NVDEC is not usable: {self._gpu_problem}"
            )
        if self.params.device == "auto" and self._gpu_problem is None and not self.feeds_the_gpu():
            # Frames decoded on the GPU for models on the CPU would each be copied back.
            self._gpu_problem = "no stage it feeds runs on the GPU"
        if self.params.device == "auto":
            where = "NVDEC" if self._gpu_problem is None else f"the CPU ({self._gpu_problem})"
            ctx.logger.info("decoding on %s", where)

    async def on_stream_added(self, info: StreamInfo) -> None:
        if info.video is None or info.video.decoded:
            return  # no video, or frames already decoded by the source: they pass through
        if self._gpu_problem is None:
            problem = nvdec_unusable(info.video.codec)
            if problem is None:
                try:
                    gpu = await self.ctx.run_blocking(NvdecDecoder, info.video)
                except Exception as exc:  # PyNvVideoCodec's errors share no base of ours
                    if self.params.device == "gpu":
                        raise StreamError(info.stream_id, f"NVDEC cannot open a decoder: {exc}") from exc
                    problem = f"NVDEC cannot open a decoder: {exc}"
                else:
                    self._streams[info.stream_id] = _StreamDecoder(codec=None, gpu=gpu)
                    return
            self.ctx.logger.info("stream %s: decoding on the CPU: %s", info.stream_id, problem)
        codec = open_decoder(info.stream_id, info.video.codec, "video")
        if info.video.extradata:
            codec.extradata = info.video.extradata
        codec.thread_type = "AUTO"
        codec.thread_count = self.params.threads
        self._streams[info.stream_id] = _StreamDecoder(codec)

    async def process(self, item: Item) -> Sequence[Item]:
        packet = item.media
        if not isinstance(packet, EncodedPacket):
            return (item,)
        if packet.kind != "video":
            return ()  # another track's packet (audio_decode's): not a frame, so not a drop either
        state = self._streams.get(item.stream_id)
        if state is None:
            raise StreamError(item.stream_id, "decode: packet for a stream that has no video codec")
        async with state.turn:
            return await self._decode_packet(item, packet, state)

    async def _decode_packet(self, item: Item, packet: EncodedPacket, state: _StreamDecoder) -> Sequence[Item]:
        state.sent[packet.pts or 0] = _Sent(item.capture_time, item.timings_ms)
        state.time_base = packet.time_base
        frames: Sequence[VideoFrame | int]
        try:
            if state.gpu is not None:
                frames = await self.ctx.run_blocking(
                    state.gpu.decode,
                    bytes(packet.payload),
                    packet.pts or 0,
                    packet.is_keyframe,
                    packet.time_base,
                    self._wanted(state),
                )
            else:
                frames = await self.ctx.run_blocking(
                    _decode, state.codec, packet.payload, packet.time_base, self._wanted(state)
                )
        except self._decode_errors(state) as exc:
            state.errors_in_row = count_decode_error(
                self.ctx, item.stream_id, state.errors_in_row, self.params.max_consecutive_errors, "video", exc
            )
            return ()
        state.errors_in_row = 0
        return self._to_items(item.stream_id, state, frames)

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        state = self._streams.pop(eos.stream_id, None)
        if state is None:
            return ()
        # Flush even after a source error (a truncated file): the frames it already read are real.
        frames: Sequence[VideoFrame | int]
        try:
            async with state.turn:
                if state.gpu is not None:
                    frames = await self.ctx.run_blocking(state.gpu.flush, state.time_base, self._wanted(state))
                else:
                    frames = await self.ctx.run_blocking(
                        _decode, state.codec, None, state.time_base, self._wanted(state)
                    )
        except self._decode_errors(state) as exc:
            self.ctx.logger.warning("stream %s: flushing the decoder failed: %s", eos.stream_id, reason(exc))
            return ()
        return self._to_items(eos.stream_id, state, frames)

    @staticmethod
    def _decode_errors(state: _StreamDecoder) -> type[Exception] | tuple[type[Exception], ...]:
        """What a bad packet raises: FFmpeg's errors on the CPU; on NVDEC, the Annex B
        conversion's ``ValueError`` or whatever PyNvVideoCodec raises (its exceptions share no
        base of ours), each counted toward ``max_consecutive_errors`` like FFmpeg's."""
        return Exception if state.gpu is not None else av.FFmpegError

    def _wanted(self, state: _StreamDecoder) -> Callable[[int], bool]:
        """Whether the frame of a pts is worth converting: not with its budget already spent."""
        budget = self.params.latency_budget_ms
        sent = state.sent

        def wanted(pts: int) -> bool:
            packet = sent.get(pts)
            return packet is None or overdue_ms(packet.capture_time, budget) is None

        return wanted

    def _to_items(self, stream_id: str, state: _StreamDecoder, frames: Sequence[VideoFrame | int]) -> list[Item]:
        items = []
        counters = self.ctx.stats.stream(stream_id)
        for frame in frames:
            seq = state.next_seq
            state.next_seq += 1
            counters.decoded += 1
            packet = state.sent.pop(frame if isinstance(frame, int) else frame.pts, None)
            if isinstance(frame, int):  # too late to be worth its pixels
                self.ctx.stats.count_drop(stream_id, f"late:{self.name}")
                continue
            item = Item(stream_id=stream_id, media=frame, capture_time=time.time(), seq=seq)
            if packet is not None:
                item.capture_time = packet.capture_time
                item.timings_ms.update(packet.timings_ms)
                item.mark("decode")  # since its packet's last part: waiting for the decoder, and decoding
            items.append(item)
        if len(state.sent) > 64:  # pts the decoder never returned (dropped by FFmpeg)
            for pts in sorted(state.sent)[:-64]:
                del state.sent[pts]
        return items


def _decode(codec: Any, packet: Any, time_base: Any, wanted: Callable[[int], bool]) -> list[VideoFrame | int]:
    """The frames ``packet`` completes; a frame not ``wanted`` is only its pts (never converted)."""
    frames: list[VideoFrame | int] = []
    for frame in codec.decode(packet):
        pts = frame.pts if frame.pts is not None else 0
        if not wanted(pts):
            frames.append(pts)
            continue
        # Converted to BGR by the first stage that needs the pixels (VideoFrame.bgr).
        frames.append(
            VideoFrame(data=None, pts=pts, time_base=time_base, width=frame.width, height=frame.height, decoded=frame)
        )
    return frames
