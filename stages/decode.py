"""``decode``: compressed video packets to BGR frames with PyAV (FFmpeg), in the thread pool.

Packets of other tracks (audio) are consumed without a trace: ``audio_decode`` reads those.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import av
from pydantic import Field

from pipeline.errors import StreamError
from pipeline.media import EncodedPacket, EndOfStream, Item, StreamInfo, VideoFrame
from pipeline.stage import Stage, StageParams, register_stage

from .decoding import count_decode_error


class DecodeParams(StageParams):
    device: Literal["auto", "cpu"] = "auto"
    """Where to decode; ``auto`` is the CPU until the GPU decoder lands."""
    threads: int = Field(default=0, ge=0)
    """FFmpeg decoder threads per stream; 0 lets FFmpeg choose."""
    max_consecutive_errors: int = Field(default=10, ge=1)
    """Packets in a row that fail to decode before the stream is declared broken."""


@dataclass
class _StreamDecoder:
    codec: Any
    time_base: Any = None
    next_seq: int = 0
    errors_in_row: int = 0
    capture_times: dict[int, float] = field(default_factory=dict)


@register_stage("decode")
class Decode(Stage):
    Params = DecodeParams
    params: DecodeParams
    latency_key = "decode"

    def __init__(self, name: str, params: DecodeParams) -> None:
        super().__init__(name, params)
        self._streams: dict[str, _StreamDecoder] = {}

    async def on_stream_added(self, info: StreamInfo) -> None:
        if info.video is None:
            return
        codec = av.CodecContext.create(info.video.codec, "r")
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
        state.capture_times[packet.pts or 0] = item.capture_time
        state.time_base = packet.time_base
        try:
            frames = await self.ctx.run_blocking(_decode, state.codec, packet.payload, packet.time_base)
        except av.FFmpegError as exc:
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
        try:
            frames = await self.ctx.run_blocking(_decode, state.codec, None, state.time_base)
        except av.FFmpegError as exc:
            self.ctx.logger.warning("stream %s: flushing the decoder failed: %s", eos.stream_id, exc)
            return ()
        return self._to_items(eos.stream_id, state, frames)

    def _to_items(self, stream_id: str, state: _StreamDecoder, frames: list[VideoFrame]) -> list[Item]:
        items = []
        counters = self.ctx.stats.stream(stream_id)
        for frame in frames:
            capture = state.capture_times.pop(frame.pts, None)
            items.append(
                Item(stream_id=stream_id, media=frame, capture_time=capture or time.time(), seq=state.next_seq)
            )
            state.next_seq += 1
            counters.decoded += 1
        if len(state.capture_times) > 64:  # pts the decoder never returned (dropped by FFmpeg)
            for pts in sorted(state.capture_times)[:-64]:
                del state.capture_times[pts]
        return items


def _decode(codec: Any, packet: Any, time_base: Any) -> list[VideoFrame]:
    frames = []
    for frame in codec.decode(packet):
        pts = frame.pts if frame.pts is not None else 0
        frames.append(
            VideoFrame(
                data=frame.to_ndarray(format="bgr24"),
                pts=pts,
                time_base=time_base,
                width=frame.width,
                height=frame.height,
            )
        )
    return frames
