"""``speech_segments``: per-window speech probabilities (Silero VAD) to speech segments.

Silero's own segmentation (``get_speech_timestamps``), run as the windows arrive: speech starts at
the first window with probability >= ``threshold``; it ends where the probability fell below
``neg_threshold`` (``threshold - 0.15`` by default) once it has stayed there ``min_silence_ms``;
segments shorter than ``min_speech_ms`` are discarded; each kept segment is widened by
``speech_pad_ms`` on both sides (never past the stream's start or end, nor into the previous
segment). Times are media time: the windows' pts.

A window on which a segment closes is published at once (with ``per_window: true``, every window
is, one window late); the others are counted as ``consumed``, not dropped. The latest window is
held back until the next one arrives, so that a segment still open when the stream ends has an
item to travel on; that wait is the window's ``held`` latency part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from pipeline.media import AudioChunk, EndOfStream, Item
from pipeline.stage import Stage, StageContext, StageParams, register_stage
from pipeline.tensors import ModelOutput


class SpeechSegmentsParams(StageParams):
    input: str | None = None
    """The ``infer`` stage whose output to read; defaults to this stage's first input."""
    output: str = "output"
    """The model output holding the speech probability (Silero VAD: ``output``)."""
    threshold: float = Field(default=0.5, gt=0, lt=1)
    """Probability at or above which a window is speech."""
    neg_threshold: float | None = Field(default=None, gt=0, lt=1)
    """Probability below which speech may end; default ``max(threshold - 0.15, 0.01)``."""
    min_silence_ms: float = Field(default=100.0, ge=0)
    """Silence this long ends a segment."""
    min_speech_ms: float = Field(default=250.0, ge=0)
    """Shorter segments are discarded."""
    speech_pad_ms: float = Field(default=30.0, ge=0)
    """Added before and after each segment."""
    per_window: bool = False
    """Publish every window with its probability, not only those that close a segment."""

    @model_validator(mode="after")
    def _thresholds_in_order(self) -> SpeechSegmentsParams:
        if self.neg_threshold is not None and self.neg_threshold > self.threshold:
            raise ValueError(f"neg_threshold ({self.neg_threshold}) must not exceed threshold ({self.threshold})")
        return self

    @property
    def low_threshold(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)


@dataclass
class _Speech:
    """One stream's segmentation state; positions are pts in samples."""

    held: Item | None = None
    triggered: bool = False
    start: int = 0
    silence_from: int | None = None
    """Where the current run of low probability began, while speech is on."""
    last_end: int | None = None
    """The previous published segment's (padded) end."""
    stream_start: int | None = None
    end: int = 0
    """Where the audio seen so far ends."""
    time_base: Fraction = Fraction(1, 16000)
    sample_rate: int = 16000


@register_stage("speech_segments")
class SpeechSegments(Stage):
    Params = SpeechSegmentsParams
    params: SpeechSegmentsParams
    latency_key = "post"
    latency_keys = ("held",)

    def __init__(self, name: str, params: SpeechSegmentsParams) -> None:
        super().__init__(name, params)
        self._streams: dict[str, _Speech] = {}

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self.source_key = self.params.input or ctx.input_stages[0]

    async def process(self, item: Item) -> Sequence[Item]:
        chunk = item.media
        if not isinstance(chunk, AudioChunk):
            return (item,)
        output = item.tensors.pop(self.source_key, None)
        if not isinstance(output, ModelOutput):
            raise ValueError(f"no model output from stage {self.source_key!r} on this item (is it an infer stage?)")
        if self.params.output not in output.outputs:
            raise ValueError(f"model {output.model!r} has no output {self.params.output!r}")
        probability = float(np.asarray(output.outputs[self.params.output]).reshape(-1)[0])
        state = self._streams.setdefault(item.stream_id, _Speech())
        segments = self._step(state, chunk, probability)
        if self.params.per_window or segments:
            item.results[self.name] = self._result(segments, probability)
        if segments and not self.params.per_window:
            # Out at once: no speech is open now, so no window needs holding for the stream's end.
            released, state.held = state.held, None
            return (*self._release(released), item)
        item.mark("post")  # its own segmentation is done; what follows is waiting for the next window
        released, state.held = state.held, item
        return self._release(released)

    async def stop(self) -> None:
        # Streams that never ended here (a drain that timed out): their held window is lost.
        for state in self._streams.values():
            if state.held is not None:
                self.ctx.stats.drop_item(state.held, "shutdown")
        self._streams.clear()

    async def on_stream_ended(self, eos: EndOfStream) -> Sequence[Item]:
        state = self._streams.pop(eos.stream_id, None)
        if state is None or state.held is None:
            return ()
        item = state.held
        if state.triggered:
            segment = self._close(state, state.end)
            if segment is not None:
                result = item.results.get(self.name) or self._result([], None)
                result["segments"].append(segment)
                item.results[self.name] = result
        return self._release(item)

    def _release(self, item: Item | None) -> Sequence[Item]:
        if item is None:
            return ()
        item.mark("held")
        if self.name in item.results:
            return (item,)
        self.ctx.stats.stream(item.stream_id).consumed += 1
        return ()

    def _result(self, segments: list[dict[str, float]], probability: float | None) -> dict[str, Any]:
        result: dict[str, Any] = {"type": "speech_segments", "segments": segments}
        if self.params.per_window and probability is not None:
            result["probability"] = round(probability, 4)
        return result

    def _step(self, state: _Speech, chunk: AudioChunk, probability: float) -> list[dict[str, float]]:
        """Silero's segmentation for one window; the segments that close at it."""
        position = chunk.pts
        state.time_base = chunk.time_base
        state.sample_rate = chunk.sample_rate
        if state.stream_start is None:
            state.stream_start = position
        state.end = position + chunk.data.shape[-1]
        if probability >= self.params.threshold:
            state.silence_from = None
            if not state.triggered:
                state.triggered, state.start = True, position
            return []
        if not state.triggered or probability >= self.params.low_threshold:
            return []
        if state.silence_from is None:
            state.silence_from = position
        if position - state.silence_from < self._samples(self.params.min_silence_ms, chunk.sample_rate):
            return []
        segment = self._close(state, state.silence_from)
        return [segment] if segment is not None else []

    def _close(self, state: _Speech, end: int) -> dict[str, float] | None:
        """End the open segment at ``end``: padded and in seconds, or None if it is too short."""
        rate = state.sample_rate
        start = state.start
        state.triggered, state.silence_from = False, None
        if end - start <= self._samples(self.params.min_speech_ms, rate):
            return None
        pad = self._samples(self.params.speech_pad_ms, rate)
        floor = state.last_end if state.last_end is not None else (state.stream_start or 0)
        start = max(start - pad, floor)
        end = min(end + pad, state.end)
        state.last_end = end
        return {"start_s": round(float(start * state.time_base), 4), "end_s": round(float(end * state.time_base), 4)}

    @staticmethod
    def _samples(ms: float, sample_rate: int) -> int:
        return round(ms * sample_rate / 1000)
