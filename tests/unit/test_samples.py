"""samples/: the committed speech and its truth, and the A/V sample made from it."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import av
import numpy as np
import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.fixture(scope="module")
def make_samples() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_samples", SAMPLES / "make_samples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def speech() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / "speech.json").read_text())
    return data


def test_the_speech_truth_is_what_the_committed_waveform_measures(make_samples, speech):
    # Re-measured from speech.flac with the script's own method: the truth cannot drift from the file.
    samples = make_samples.decode_audio(str(SAMPLES / "speech.flac"), "s16", "mono", 16000)[0]
    assert speech["sample_rate"] == 16000
    assert len(samples) / 16000 == speech["duration_s"] == 10.0
    measured = make_samples.speech_intervals(samples, 16000)
    truth = [(u["start_s"], u["end_s"]) for u in speech["utterances"]]
    assert [(round(a, 4), round(b, 4)) for a, b in measured] == truth
    assert [u["text"] for u in speech["utterances"]] == list(make_samples.UTTERANCES)


def test_utterances_are_short_and_apart(speech):
    utterances = speech["utterances"]
    assert len(utterances) == 4
    assert all(0.3 < u["end_s"] - u["start_s"] < 2.5 for u in utterances)
    assert all(b["start_s"] - a["end_s"] >= 1.0 for a, b in itertools.pairwise(utterances))
    assert utterances[0]["start_s"] >= 0.5 and utterances[-1]["end_s"] <= speech["duration_s"] - 0.5


def test_outside_the_utterances_there_is_silence(make_samples, speech):
    samples = make_samples.decode_audio(str(SAMPLES / "speech.flac"), "s16", "mono", 16000)[0]
    speaking = np.zeros(len(samples), bool)
    for u in speech["utterances"]:
        speaking[math.floor(u["start_s"] * 16000) : math.ceil(u["end_s"] * 16000)] = True  # 4 decimals
    assert np.abs(samples[~speaking].astype(np.int32)).max() <= 32768 * 10 ** (-50 / 20)  # -50 dBFS
    assert np.abs(samples[speaking].astype(np.int32)).max() > 10000


def test_the_av_sample_is_the_text_video_plus_the_speech(av_sample, sample_video, speech):
    truth = json.loads((SAMPLES / "av.json").read_text())
    text_truth = json.loads((SAMPLES / "text.json").read_text())
    assert truth["speech"] == speech["utterances"]
    assert {k: v for k, v in truth.items() if k not in ("video", "audio", "speech")} == {
        k: v for k, v in text_truth.items() if k != "video"
    }
    with av.open(str(av_sample)) as both, av.open(str(sample_video)) as text:
        video, audio = both.streams.video[0], both.streams.audio[0]
        assert (audio.codec_context.name, audio.sample_rate, audio.channels) == ("aac", 48000, 2)
        # The video packets are text.mp4's own, untouched.
        ours = [bytes(p) for p in both.demux(video) if p.size]
        theirs = [bytes(p) for p in text.demux(text.streams.video[0]) if p.size]
        assert ours == theirs
