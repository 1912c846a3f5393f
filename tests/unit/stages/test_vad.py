"""stages.vad: speech probabilities per window to speech segments.

The segmentation is checked three ways: on hand-made probability sequences (exact numbers), against
a line-by-line port of Silero's own ``get_speech_timestamps`` on random sequences, and end to end on
the sample's real speech with the real Silero model, run here by hand with ONNX Runtime (state fed
back per stream), both stage by stage and through the real Runner.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from pipeline.config import parse_config
from pipeline.graph import build_graph
from pipeline.media import AudioChunk, EndOfStream, Item, StreamStarted, VideoFrame
from pipeline.modelcard import load_model_card
from pipeline.modelstore import model_path
from pipeline.runner import Runner
from pipeline.stage import Stage, StageContext
from pipeline.stats import StreamStats
from pipeline.tensors import ModelOutput, PreparedTensor
from stages.audio.speech_segments import SpeechSegments, SpeechSegmentsParams
from stages.decode.audio_decode import AudioDecode, AudioDecodeParams
from stages.ingest.file import FileParams, FileSource
from tests.fakes import EmitRecorder

ROOT = Path(__file__).resolve().parents[3]
RATE = 16000
WINDOW = 512
W_S = WINDOW / RATE  # one window, in seconds: 0.032
TOLERANCE_S = 0.150


# --- driving the stage with made-up probabilities -------------------------------------------------


def window_item(stream_id: str, index: int, probability: float, samples: int = WINDOW, origin: int = 0) -> Item:
    chunk = AudioChunk(np.zeros((1, samples), np.float32), origin + index * WINDOW, Fraction(1, RATE), RATE)
    item = Item(stream_id=stream_id, media=chunk, capture_time=0.0, seq=index)
    item.tensors["vad"] = ModelOutput("silero-vad", {"output": np.array([probability], np.float32)}, None)
    return item


async def started(make_ctx, **params) -> SpeechSegments:
    stage = SpeechSegments("speech", SpeechSegmentsParams(**params))
    await stage.start(make_ctx("speech", input_stages=("vad",)))
    return stage


async def run_probabilities(
    stage: SpeechSegments, probabilities: Sequence[float], stream_id: str = "mic", last_samples: int = WINDOW
) -> list[Item]:
    """Feed one window per probability, then end the stream; return what the stage passed on."""
    out: list[Item] = []
    for index, p in enumerate(probabilities):
        samples = last_samples if index == len(probabilities) - 1 else WINDOW
        out += await stage.process(window_item(stream_id, index, p, samples))
    out += await stage.on_stream_ended(EndOfStream(stream_id))
    return out


def segments_of(items: Sequence[Item], stage: str = "speech") -> list[tuple[float, float]]:
    found = []
    for item in items:
        result = item.results[stage]
        assert result["type"] == "speech_segments"
        found += [(s["start_s"], s["end_s"]) for s in result["segments"]]
    return found


def pattern(*runs: tuple[float, int]) -> list[float]:
    """``(probability, windows)`` runs, flattened."""
    return [p for p, count in runs for _ in range(count)]


# --- exact behaviour ----------------------------------------------------------------------------------


async def test_a_segment_starts_at_its_first_speech_window_and_ends_where_silence_began(make_ctx):
    stage = await started(make_ctx, speech_pad_ms=0)
    probabilities = pattern((0.1, 10), (0.9, 20), (0.1, 10))
    out = await run_probabilities(stage, probabilities)
    # min_silence_ms 100 = 3.125 windows: the segment is known to be over at the 4th quiet window
    # (4 * 512 samples after the silence began) and is published on that window.
    assert [item.seq for item in out] == [30 + 4]
    assert segments_of(out) == [(round(10 * W_S, 4), round(30 * W_S, 4))]
    counters = stage.ctx.stats.stream("mic")
    assert counters.consumed == len(probabilities) - 1
    assert counters.dropped == 0


async def test_padding_widens_segments_but_not_past_the_stream_start(make_ctx):
    stage = await started(make_ctx)  # speech_pad_ms 30 = 480 samples
    out = await run_probabilities(stage, pattern((0.9, 20), (0.1, 10), (0.9, 20), (0.1, 10)))
    pad = 480 / RATE
    assert segments_of(out) == [
        (0.0, round(20 * W_S + pad, 4)),
        (round(30 * W_S - pad, 4), round(50 * W_S + pad, 4)),
    ]


async def test_a_short_dip_does_not_split_a_segment_and_middling_probability_neither_starts_nor_ends(make_ctx):
    stage = await started(make_ctx, speech_pad_ms=0)
    # 3 quiet windows (96 ms) < min_silence 100 ms; 0.4 is between neg_threshold 0.35 and threshold 0.5.
    probabilities = pattern((0.4, 10), (0.9, 10), (0.1, 3), (0.9, 10), (0.4, 20), (0.9, 5), (0.1, 10))
    out = await run_probabilities(stage, probabilities)
    assert segments_of(out) == [(round(10 * W_S, 4), round(58 * W_S, 4))]


async def test_hysteresis_uses_neg_threshold(make_ctx):
    probabilities = pattern((0.1, 5), (0.9, 20), (0.3, 10), (0.1, 10))
    default = segments_of(await run_probabilities(await started(make_ctx, speech_pad_ms=0), probabilities))
    assert default == [(round(5 * W_S, 4), round(25 * W_S, 4))]  # 0.3 < 0.35: silence from there
    low = await started(make_ctx, speech_pad_ms=0, neg_threshold=0.2)
    assert segments_of(await run_probabilities(low, probabilities)) == [(round(5 * W_S, 4), round(35 * W_S, 4))]


async def test_short_segments_are_discarded_and_consumed(make_ctx):
    stage = await started(make_ctx)
    probabilities = pattern((0.1, 5), (0.9, 7), (0.1, 10), (0.9, 9), (0.1, 10))  # 224 ms, then 288 ms
    out = await run_probabilities(stage, probabilities)
    assert segments_of(out) == [(round(22 * W_S - 0.03, 4), round(31 * W_S + 0.03, 4))]
    assert stage.ctx.stats.stream("mic").consumed == len(probabilities) - 1


async def test_speech_still_open_at_the_end_is_closed_at_the_end_of_the_audio(make_ctx):
    stage = await started(make_ctx)
    # The last window is partial: 100 real samples (its tensor was zero-padded upstream).
    out = await run_probabilities(stage, pattern((0.1, 10), (0.9, 15)), last_samples=100)
    assert [item.seq for item in out] == [24]  # the held last window carries it
    assert segments_of(out) == [(round(10 * W_S - 0.03, 4), round((24 * WINDOW + 100) / RATE, 4))]
    counters = stage.ctx.stats.stream("mic")
    assert counters.consumed == 24
    assert counters.consumed + len(out) == 25


async def test_nothing_to_say_consumes_every_window(make_ctx):
    stage = await started(make_ctx)
    assert await run_probabilities(stage, pattern((0.1, 40))) == []
    assert stage.ctx.stats.stream("mic").consumed == 40


async def test_a_window_still_held_when_the_stage_stops_is_counted_as_dropped(make_ctx):
    # A drain that timed out: the stream never ended here, and its held window is not lost silently.
    stage = await started(make_ctx)
    for index, p in enumerate(pattern((0.1, 3), (0.9, 5))):
        assert list(await stage.process(window_item("mic", index, p))) == []
    await stage.stop()
    counters = stage.ctx.stats.stream("mic")
    assert (counters.consumed, counters.drops) == (7, {"shutdown": 1})


async def test_per_window_publishes_every_window_with_its_probability(make_ctx):
    stage = await started(make_ctx, per_window=True, speech_pad_ms=0)
    probabilities = pattern((0.1, 3), (0.9, 12), (0.1, 6))
    out = await run_probabilities(stage, probabilities)
    assert [item.seq for item in out] == list(range(len(probabilities)))
    assert [item.results["speech"]["probability"] for item in out] == pytest.approx(probabilities, abs=1e-4)
    closing = [item.seq for item in out if item.results["speech"]["segments"]]
    assert closing == [15 + 4]
    assert segments_of(out) == [(round(3 * W_S, 4), round(15 * W_S, 4))]
    assert stage.ctx.stats.stream("mic").consumed == 0


async def test_streams_are_segmented_independently(make_ctx):
    stage = await started(make_ctx, speech_pad_ms=0)
    a = pattern((0.9, 20), (0.1, 10))
    b = pattern((0.1, 10), (0.9, 15), (0.1, 5))
    out: dict[str, list[Item]] = {"a": [], "b": []}
    for index in range(max(len(a), len(b))):
        for sid, probabilities in (("a", a), ("b", b)):
            if index < len(probabilities):
                out[sid] += await stage.process(window_item(sid, index, probabilities[index]))
    for sid in out:
        out[sid] += await stage.on_stream_ended(EndOfStream(sid))
    assert segments_of(out["a"]) == [(0.0, round(20 * W_S, 4))]
    assert segments_of(out["b"]) == [(round(10 * W_S, 4), round(25 * W_S, 4))]


async def test_media_time_follows_the_windows_pts(make_ctx):
    stage = await started(make_ctx, speech_pad_ms=0)
    origin = 5 * RATE  # audio that starts 5 s into the stream
    out = []
    for index, p in enumerate(pattern((0.1, 2), (0.9, 10), (0.1, 5))):
        out += await stage.process(window_item("mic", index, p, origin=origin))
    assert segments_of(out) == [(round(5 + 2 * W_S, 4), round(5 + 12 * W_S, 4))]


async def test_an_item_without_model_output_is_an_error_and_other_media_passes(make_ctx):
    stage = await started(make_ctx)
    item = window_item("mic", 0, 0.5)
    item.tensors.clear()
    with pytest.raises(ValueError, match="no model output from stage 'vad'"):
        await stage.process(item)
    wrong = window_item("mic", 0, 0.5)
    wrong.tensors["vad"] = ModelOutput("other", {"logits": np.zeros(1)}, None)
    with pytest.raises(ValueError, match="has no output 'output'"):
        await stage.process(wrong)
    frame = Item("cam", VideoFrame(np.zeros((2, 2, 3), np.uint8), 0, Fraction(1, 25), 2, 2), 0.0, seq=0)
    assert list(await stage.process(frame)) == [frame]


def test_params_validation():
    params = SpeechSegmentsParams()
    assert (params.threshold, params.low_threshold, params.min_silence_ms) == (0.5, pytest.approx(0.35), 100)
    assert (params.min_speech_ms, params.speech_pad_ms, params.per_window) == (250, 30, False)
    assert SpeechSegmentsParams(threshold=0.1).low_threshold == 0.01
    for bad in ({"threshold": 1.5}, {"threshold": 0.4, "neg_threshold": 0.6}, {"min_silence_ms": -1}, {"pad": 1}):
        with pytest.raises(ValidationError):
            SpeechSegmentsParams.model_validate(bad)


# --- against Silero's own algorithm -----------------------------------------------------------------


def silero_reference(
    probs: Sequence[float],
    audio_length: int,
    *,
    threshold: float = 0.5,
    neg_threshold: float | None = None,
    min_speech_ms: float = 250,
    min_silence_ms: float = 100,
    speech_pad_ms: float = 30,
) -> list[tuple[float, float]]:
    """silero_vad.utils_vad.get_speech_timestamps (v5/v6) after the model has run, without
    max_speech_duration_s (infinite by default), in seconds as speech_segments rounds them."""
    window = WINDOW
    min_speech_samples = RATE * min_speech_ms / 1000
    speech_pad_samples = RATE * speech_pad_ms / 1000
    min_silence_samples = RATE * min_silence_ms / 1000
    if neg_threshold is None:
        neg_threshold = max(threshold - 0.15, 0.01)
    triggered = False
    speeches: list[dict[str, int]] = []
    current: dict[str, int] = {}
    temp_end = 0
    for i, p in enumerate(probs):
        if p >= threshold and temp_end:
            temp_end = 0
        if p >= threshold and not triggered:
            triggered = True
            current["start"] = window * i
            continue
        if p < neg_threshold and triggered:
            if not temp_end:
                temp_end = window * i
            if window * i - temp_end < min_silence_samples:
                continue
            current["end"] = temp_end
            if current["end"] - current["start"] > min_speech_samples:
                speeches.append(current)
            current = {}
            temp_end = 0
            triggered = False
            continue
    if current and audio_length - current["start"] > min_speech_samples:
        current["end"] = audio_length
        speeches.append(current)
    for i, speech in enumerate(speeches):
        if i == 0:
            speech["start"] = int(max(0, speech["start"] - speech_pad_samples))
        if i != len(speeches) - 1:
            silence = speeches[i + 1]["start"] - speech["end"]
            if silence < 2 * speech_pad_samples:
                speech["end"] += int(silence // 2)
                speeches[i + 1]["start"] = int(max(0, speeches[i + 1]["start"] - silence // 2))
            else:
                speech["end"] = int(min(audio_length, speech["end"] + speech_pad_samples))
                speeches[i + 1]["start"] = int(max(0, speeches[i + 1]["start"] - speech_pad_samples))
        else:
            speech["end"] = int(min(audio_length, speech["end"] + speech_pad_samples))
    return [(round(s["start"] / RATE, 4), round(s["end"] / RATE, 4)) for s in speeches]


def random_probabilities(rng: random.Random, count: int) -> list[float]:
    """Runs of speech-like and silence-like windows, with noise and middling values."""
    probabilities: list[float] = []
    speech = rng.random() < 0.5
    while len(probabilities) < count:
        for _ in range(rng.choice([1, 2, 3, 4, 6, 9, 15, 30])):
            centre = 0.8 if speech else 0.15
            probabilities.append(min(1.0, max(0.0, rng.gauss(centre, 0.2))))
        speech = not speech
    return probabilities[:count]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(
    "params",
    [{}, {"threshold": 0.6, "min_silence_ms": 200, "min_speech_ms": 100, "speech_pad_ms": 60}, {"neg_threshold": 0.5}],
)
async def test_matches_silero_get_speech_timestamps(make_ctx, seed, params):
    rng = random.Random(seed)
    probabilities = random_probabilities(rng, 400)
    last = rng.randint(1, WINDOW)
    stage = await started(make_ctx, **params)
    out = await run_probabilities(stage, probabilities, last_samples=last)
    expected = silero_reference(probabilities, (len(probabilities) - 1) * WINDOW + last, **params)
    assert expected  # the sequences do hold speech
    assert segments_of(out) == expected
    assert stage.ctx.stats.stream("mic").consumed + len(out) == len(probabilities)


# --- the real model on the sample's speech ---------------------------------------------------------


class Silero:
    """The real Silero VAD, run by hand: one session, each stream's state fed back."""

    def __init__(self) -> None:
        path = model_path(load_model_card("silero-vad", ROOT))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.states: dict[str, np.ndarray] = {}

    def __call__(self, stream_id: str, tensor: np.ndarray) -> ModelOutput:
        state = self.states.get(stream_id, np.zeros((2, 1, 128), np.float32))
        feeds = {"input": tensor[None], "state": state, "sr": np.array(RATE, np.int64)}
        output, self.states[stream_id] = self.session.run(["output", "stateN"], feeds)
        return ModelOutput("silero-vad", {"output": output[0]}, None)


@pytest.fixture(scope="module")
def silero() -> Silero:
    return Silero()


async def source_messages(make_ctx, path: Path, stream_id: str) -> list[Any]:
    source = FileSource("file", FileParams(path=str(path), id=stream_id, tracks=["audio"]))
    await source.start(make_ctx("file"))
    emit = EmitRecorder()
    await asyncio.wait_for(source.run(emit), timeout=60)
    return emit.messages


async def segment_file(make_ctx, path: Path, silero: Silero, stream_id: str = "av") -> tuple[list[Item], Any]:
    """file (audio track) -> audio_decode -> Silero by hand -> speech_segments, stage by stage."""
    stats = StreamStats()
    decode = AudioDecode("audio", AudioDecodeParams())
    await decode.start(make_ctx("audio", stats=stats))
    vad = SpeechSegments("speech", SpeechSegmentsParams())
    await vad.start(make_ctx("speech", input_stages=("vad",), stats=stats))
    out: list[Item] = []

    async def to_vad(windows: Sequence[Item]) -> None:
        for window in windows:
            prepared = window.tensors.pop("audio")
            assert isinstance(prepared, PreparedTensor)
            window.tensors["vad"] = silero(window.stream_id, prepared.data)
            out.extend(await vad.process(window))

    for message in await source_messages(make_ctx, path, stream_id):
        if isinstance(message, StreamStarted):
            await decode.on_stream_added(message.info)
        elif isinstance(message, Item):
            await to_vad(await decode.process(message))
        else:
            await to_vad(await decode.on_stream_ended(message))
            out.extend(await vad.on_stream_ended(message))
    return out, decode.ctx.stats.stream(stream_id)


def check_against_truth(segments: list[tuple[float, float]], truth: list[dict[str, Any]]) -> None:
    """Each utterance: exactly one segment, both edges within TOLERANCE_S; no segment elsewhere."""
    for utterance in truth:
        overlapping = [s for s in segments if s[0] < utterance["end_s"] and s[1] > utterance["start_s"]]
        assert len(overlapping) == 1, f"{utterance['text']!r}: {overlapping}"
        start, end = overlapping[0]
        assert abs(start - utterance["start_s"]) <= TOLERANCE_S, (utterance, start)
        assert abs(end - utterance["end_s"]) <= TOLERANCE_S, (utterance, end)
    assert len(segments) == len(truth), segments  # so none lies in a silence


async def test_real_silero_finds_each_utterance_of_the_sample(make_ctx, av_sample, speech_truth, silero):
    out, counters = await segment_file(make_ctx, av_sample, silero)
    segments = segments_of(out)
    check_against_truth(segments, speech_truth)
    # One message per segment, on the window where it closed; every other window consumed.
    assert len(out) == len(speech_truth)
    assert counters.consumed == counters.decoded - len(out)


async def test_the_lossless_speech_gives_the_same_segments_as_the_aac_in_the_sample(
    make_ctx, av_sample, speech_truth, silero
):
    flac, _ = await segment_file(make_ctx, ROOT / "samples" / "speech.flac", silero, "flac")
    check_against_truth(segments_of(flac), speech_truth)


# --- through the real Runner: the counters' invariant -------------------------------------------------


class SileroByHand(Stage):
    """An ``infer`` stand-in until the infer stage carries per-stream state: the real model."""

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self.silero = Silero()

    async def process(self, item: Item) -> Sequence[Item]:
        prepared = item.tensors.pop(self.ctx.input_stages[0])
        item.tensors[self.name] = self.silero(item.stream_id, prepared.data)
        return (item,)


async def test_through_the_runner_every_window_is_published_dropped_or_consumed(tmp_path, av_sample, speech_truth):
    sources = [
        {"name": f"file{i}", "type": "file", "params": {"path": str(av_sample), "id": f"s{i}", "tracks": ["audio"]}}
        for i in range(3)
    ]
    config = {
        "pipeline": "unit",
        "stages": [
            *sources,
            {"name": "audio", "type": "audio_decode", "inputs": [s["name"] for s in sources]},
            {"name": "vad", "class": f"{__name__}:SileroByHand", "inputs": ["audio"]},
            {"name": "speech", "type": "speech_segments", "inputs": ["vad"], "edge": {"capacity": 2}},
            {"name": "sink", "class": "tests.fakes:CountingSink", "inputs": ["speech"], "params": {"keep": True}},
        ],
    }
    graph = build_graph(parse_config(config))
    summary = await asyncio.wait_for(Runner(graph, base_dir=tmp_path, threads=2).run(), timeout=120)
    sink = graph.nodes["sink"].stage
    assert summary.failed_streams == []
    windows = 313  # 10.0 s of 16 kHz audio (AAC pads to 10.005 s) in 512-sample windows
    for i in range(3):
        counters = summary.stats.stream(f"s{i}")
        assert counters.decoded == windows
        assert counters.decoded == counters.published + counters.dropped + counters.consumed
        assert counters.published == len(speech_truth)
        check_against_truth(segments_of([item for item in sink.items if item.stream_id == f"s{i}"]), speech_truth)
    assert summary.stats.consumed == 3 * (windows - len(speech_truth))
