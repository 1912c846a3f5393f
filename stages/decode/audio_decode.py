"""``audio_decode``: compressed audio packets to fixed windows of mono float32 samples.

Per stream: PyAV decodes the packets (in the thread pool), ``av.AudioResampler`` turns them into
float32 at ``sample_rate``, the channels are averaged to mono, and the samples are cut into
windows of ``window`` new samples.
Each window is one item: ``AudioChunk`` media (pts in samples, time base 1/``sample_rate``,
counted from the stream's first decoded audio timestamp) and a model tensor of ``context + window``
samples, the last ``context`` samples of the previous window first (zeros at stream start), as
streaming audio models such as Silero VAD take it. The stream's last, partial window is
zero-padded in the tensor; its ``AudioChunk`` holds only the real samples, so the stream's end is
known exactly downstream. Packets of other tracks (video) are consumed without a trace.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
from pydantic import Field

from pipeline.errors import StreamError
from pipeline.media import AudioChunk, EncodedPacket, EndOfStream, Item, StreamInfo, VideoFrame
from pipeline.stage import Stage, StageParams, register_stage
from pipeline.tensors import PreparedTensor

from .errors import count_decode_error, open_decoder, reason


class AudioDecodeParams(StageParams):
    sample_rate: int = Field(default=16000, ge=1000, le=384000)
    """Output sample rate (Hz); audio is resampled to it and its channels averaged to mono."""
    window: int = Field(default=512, ge=1)
    """New samples per item (Silero VAD at 16 kHz: 512)."""
    context: int = Field(default=64, ge=0)
    """Samples of the previous window put before each window's tensor (Silero VAD at 16 kHz: 64)."""
    max_consecutive_errors: int = Field(default=10, ge=1)
    """Packets in a row that fail to decode before the stream is declared broken."""


@dataclass
class _AudioStream:
    codec: Any
    resampler: Any
    context: np.ndarray
    """The last ``context`` samples handed out (the next tensor's head)."""
    origin: int | None = None
    """The first decoded sample's pts, in output samples."""
    pending: list[np.ndarray] = field(default_factory=list)
    pending_samples: int = 0
    emitted: int = 0
    """Samples handed out in windows so far."""
    next_seq: int = 0
    errors_in_row: int = 0
    last_capture: float = 0.0
    last_timings: dict[str, float] = field(default_factory=dict)
    """The latency parts of the packet ``last_capture`` is from: its windows carry on from them."""


@register_stage("audio_decode")
class AudioDecode(Stage):
    Params = AudioDecodeParams
    params: AudioDecodeParams
    latency_key = "decode"

    def __init__(self, name: str, params: AudioDecodeParams) -> None:
        super().__init__(name, params)
        self._streams: dict[str, _AudioStream] = {}
        self.time_base = Fraction(1, params.sample_rate)

    async def on_stream_added(self, info: StreamInfo) -> None:
        if info.audio is None:
            return
        codec = open_decoder(info.stream_id, info.audio.codec, "audio")
        codec.sample_rate = info.audio.sample_rate
        if info.audio.channels:
            codec.layout = _layout(info.audio.channels)
        if info.audio.extradata:
            codec.extradata = info.audio.extradata
        # Planar float, channels kept: the mean of the channels is the mono signal (FFmpeg's own
        # downmix scales each by 1/sqrt(2), which takes loud correlated stereo past full scale).
        resampler = av.AudioResampler(format="fltp", rate=self.params.sample_rate)
        self._streams[info.stream_id] = _AudioStream(codec, resampler, np.zeros(self.params.context, np.float32))

    async def process(self, item: Item) -> Sequence[Item]:
        packet = item.media
        if not isinstance(packet, EncodedPacket):
            return () if isinstance(packet, VideoFrame) else (item,)  # decoded video (whip) is decode's
        if packet.kind != "audio":
            return ()  # another track's packet (decode's): not a window, so not a drop either
        state = self._streams.get(item.stream_id)
        if state is None:
            raise StreamError(item.stream_id, "audio_decode: audio packet for a stream that has no audio codec")
        state.last_capture, state.last_timings = item.capture_time, item.timings_ms
        try:
            first_pts, samples = await self.ctx.run_blocking(
                _decode, state.codec, state.resampler, packet.payload, self.params.sample_rate
            )
        except av.FFmpegError as exc:
            state.errors_in_row = count_decode_error(
                self.ctx, item.stream_id, state.errors_in_row, self.params.max_consecutive_errors, "audio", exc
            )
            return ()
        state.errors_in_row = 0
        self._add(state, first_pts, samples)
        return self._windows(item.stream_id, state, item.capture_time, item.timings_ms, final=False)

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        state = self._streams.pop(eos.stream_id, None)
        if state is None:
            return ()
        # Flush even after a source error (a truncated file): the audio it already read is real.
        try:
            first_pts, samples = await self.ctx.run_blocking(
                _decode, state.codec, state.resampler, None, self.params.sample_rate
            )
            self._add(state, first_pts, samples)
        except av.FFmpegError as exc:
            self.ctx.logger.warning("stream %s: flushing the audio decoder failed: %s", eos.stream_id, reason(exc))
        return self._windows(eos.stream_id, state, state.last_capture or time.time(), state.last_timings, final=True)

    @staticmethod
    def _add(state: _AudioStream, first_pts: int | None, samples: np.ndarray) -> None:
        if state.origin is None and first_pts is not None:
            state.origin = first_pts
        if samples.size:
            state.pending.append(samples)
            state.pending_samples += samples.size

    def _windows(
        self, stream_id: str, state: _AudioStream, capture_time: float, timings_ms: dict[str, float], *, final: bool
    ) -> list[Item]:
        window, context = self.params.window, self.params.context
        if state.pending_samples < window and not (final and state.pending_samples):
            return []
        buffered = np.concatenate(state.pending) if len(state.pending) > 1 else state.pending[0]
        items = []
        counters = self.ctx.stats.stream(stream_id)
        start = 0
        while buffered.size - start >= window or (final and buffered.size > start):
            new = buffered[start : start + window]
            start += new.size
            tensor = np.zeros(context + window, np.float32)
            tensor[:context] = state.context
            tensor[context : context + new.size] = new
            if context:
                state.context = tensor[-context:].copy()
            chunk = AudioChunk(
                data=new.reshape(1, -1).copy(),
                pts=(state.origin or 0) + state.emitted,
                time_base=self.time_base,
                sample_rate=self.params.sample_rate,
            )
            state.emitted += new.size
            item = Item(
                stream_id=stream_id,
                media=chunk,
                capture_time=capture_time,
                seq=state.next_seq,
                timings_ms=dict(timings_ms),
            )
            item.tensors[self.name] = PreparedTensor(data=tensor, geometry=None)
            items.append(item)
            state.next_seq += 1
            counters.decoded += 1
        rest = buffered[start:]
        state.pending = [rest] if rest.size else []
        state.pending_samples = rest.size
        return items


def _layout(channels: int) -> str:
    return {1: "mono", 2: "stereo"}.get(channels, f"{channels} channels")


def _decode(codec: Any, resampler: Any, packet: Any, sample_rate: int) -> tuple[int | None, np.ndarray]:
    """One packet (None: flush) -> (the first decoded frame's pts in output samples, mono float32 samples)."""
    frames = list(codec.decode(packet))
    first_pts: int | None = None
    if frames and frames[0].pts is not None and frames[0].time_base is not None:
        first_pts = round(frames[0].pts * frames[0].time_base * sample_rate)
    parts: list[np.ndarray] = []
    for frame in [*frames, None] if packet is None else frames:
        for out in resampler.resample(frame):
            planes = out.to_ndarray()
            parts.append(planes[0] if planes.shape[0] == 1 else planes.mean(axis=0, dtype=np.float32))
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return first_pts, samples
