"""Render the sample media that the demo and the tests run on.

Deterministic: the same Pillow (its embedded Aileron font) and PyAV versions give byte-identical
files, so ground truth and media always agree. Run ``python samples/make_samples.py [OUT_DIR]``;
it writes ``text.mp4`` (H.264, 640x360, 25 fps, 10 s) and ``text.json`` (the text of every line
and its tight box in every frame), then ``av.mp4`` (text.mp4's video, untouched, plus the speech
as AAC, 48 kHz stereo) and ``av.json`` (text.json's truth plus the speech intervals).

The speech itself (``speech.flac``, 16 kHz mono, and its truth ``speech.json``) is committed,
because it is spoken by espeak-ng, which not every machine has. ``--speech`` speaks it again
(needs ``espeak-ng``: ``apt-get install espeak-ng``, ``brew install espeak-ng``) and measures the
truth from the waveform: where the short-time energy rises above a threshold.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT, FPS, SECONDS = 640, 360, 25, 10
FRAME_COUNT = FPS * SECONDS


@dataclass(frozen=True)
class TextLine:
    """One rendered line: where it starts, how it moves (pixels per frame), how it looks."""

    text: str
    size: int
    x: float
    y: float
    dx: float = 0.0
    dy: float = 0.0
    color: tuple[int, int, int] = (20, 20, 20)

    def position(self, frame_index: int) -> tuple[float, float]:
        return self.x + self.dx * frame_index, self.y + self.dy * frame_index


LINES = (
    TextLine("STREAMGRAPH DEMO", 40, 40, 24),
    TextLine("Camera 7 Gate North", 28, 40, 88, color=(10, 40, 120)),
    TextLine("Order 48213 ready", 32, 40, 150, dx=1.0),
    TextLine("Speed 62 km/h", 26, 360, 212, dx=0.2, color=(120, 20, 20)),
    TextLine("hello world 2026", 24, 40, 260),
    TextLine("Lane 3 closed at 14:05", 22, 300, 310, dx=-0.6),
)


def render_frame(frame_index: int, background: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    """Draw every line on the background; return RGB pixels and each line's tight box."""
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    boxes = []
    for line in LINES:
        font = ImageFont.load_default(size=line.size)
        x, y = line.position(frame_index)
        draw.text((round(x), round(y)), line.text, font=font, fill=line.color)
        left, top, right, bottom = draw.textbbox((round(x), round(y)), line.text, font=font)
        boxes.append([int(left), int(top), int(right), int(bottom)])
    return np.asarray(image), boxes


def make_background() -> np.ndarray:
    """A light, slightly textured background with a few shapes that are not text."""
    rng = np.random.default_rng(7)
    gradient = np.linspace(225, 245, WIDTH, dtype=np.float32)[None, :, None]
    noise = rng.normal(0.0, 3.0, (HEIGHT, WIDTH, 3)).astype(np.float32)
    pixels = np.clip(gradient + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    draw.rectangle((520, 20, 610, 70), fill=(90, 160, 90))
    draw.ellipse((540, 110, 600, 170), fill=(200, 150, 60))
    return np.asarray(image)


def write_text_video(out_dir: Path) -> None:
    video_path = out_dir / "text.mp4"
    background = make_background()
    truth: list[list[list[int]]] = []
    with av.open(str(video_path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.time_base = Fraction(1, FPS)
        # One thread and fixed options: x264 output is then byte-for-byte reproducible.
        stream.codec_context.options = {"crf": "20", "preset": "medium", "threads": "1", "g": "50"}
        for index in range(FRAME_COUNT):
            pixels, boxes = render_frame(index, background)
            truth.append(boxes)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    ground_truth = {
        "video": video_path.name,
        "width": WIDTH,
        "height": HEIGHT,
        "fps": FPS,
        "frames": FRAME_COUNT,
        "lines": [
            {"text": line.text, "boxes": [frame_boxes[i] for frame_boxes in truth]} for i, line in enumerate(LINES)
        ],
    }
    (out_dir / "text.json").write_text(json.dumps(ground_truth) + "\n")


# --- speech -----------------------------------------------------------------------------------

HERE = Path(__file__).resolve().parent
SPEECH_RATE = 16000
UTTERANCES = ("Hello there", "Please stand clear of the doors", "Gate north is open", "Thank you")
SILENCES_S = (0.8, 1.3, 1.2, 1.4)
"""Silence before each utterance; after the last, silence up to SECONDS."""
ESPEAK = ("espeak-ng", "-v", "en-us", "-s", "160", "--stdout")
FRAME_S = 0.01
ACTIVE_DBFS = -50.0
"""A 10 ms frame whose RMS is above this (dB below full scale) is speech..."""
MERGE_GAP_S = 0.4
"""...and speech runs closer than this are one utterance (the pauses between words)."""
AV_AUDIO_RATE, AV_AUDIO_LAYOUT = 48000, "stereo"  # as most real-world audio is: resampling and downmix at work


def speak(text: str) -> np.ndarray:
    """espeak-ng's voice for ``text``: int16 mono at SPEECH_RATE, leading and trailing silence cut."""
    wav = subprocess.run([*ESPEAK, text], check=True, capture_output=True).stdout
    samples = decode_audio(io.BytesIO(wav), "s16", "mono", SPEECH_RATE)[0]
    audible = np.flatnonzero(np.abs(samples.astype(np.int32)) > 32)
    return samples[audible[0] : audible[-1] + 1]


def decode_audio(source: Any, fmt: str, layout: str, rate: int) -> np.ndarray:
    """A file's first audio track, resampled: channels x samples of ``fmt``."""
    resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate)
    parts = []
    with av.open(source) as container:
        for frame in container.decode(audio=0):
            parts += [out.to_ndarray() for out in resampler.resample(frame)]
    parts += [out.to_ndarray() for out in resampler.resample(None)]
    return np.concatenate(parts, axis=1)


def speech_intervals(samples: np.ndarray, rate: int) -> list[tuple[float, float]]:
    """Where ``samples`` (int16 mono) is speech, in seconds: 10 ms frames above ACTIVE_DBFS, runs
    closer than MERGE_GAP_S merged; each interval then reaches out to the first and last sample
    above that level (halfway to the neighbouring interval at most)."""
    frame = round(rate * FRAME_S)
    count = len(samples) // frame
    rms = np.sqrt((samples[: count * frame].astype(np.float64).reshape(count, frame) ** 2).mean(axis=1))
    level = 32768.0 * 10 ** (ACTIVE_DBFS / 20)
    runs: list[list[int]] = []
    for index in np.flatnonzero(rms > level):
        if runs and index - runs[-1][1] <= MERGE_GAP_S / FRAME_S:
            runs[-1][1] = index
        else:
            runs.append([int(index), int(index)])
    spans = [(first * frame, (last + 1) * frame) for first, last in runs]
    bounds = [0, *((a[1] + b[0]) // 2 for a, b in itertools.pairwise(spans)), len(samples)]
    loud = np.abs(samples.astype(np.int32)) > level
    intervals = []
    for index in range(len(spans)):
        lo, hi = bounds[index], bounds[index + 1]
        found = np.flatnonzero(loud[lo:hi])
        intervals.append(((lo + found[0]) / rate, (lo + found[-1] + 1) / rate))
    return intervals


def write_speech(out_dir: Path) -> None:
    """Speak UTTERANCES with espeak-ng into speech.flac and measure speech.json from the waveform."""
    if shutil.which(ESPEAK[0]) is None:
        raise SystemExit(
            "--speech needs espeak-ng: apt-get install espeak-ng (Debian/Ubuntu), brew install espeak-ng (macOS)"
        )
    version = subprocess.run([ESPEAK[0], "--version"], check=True, capture_output=True, text=True).stdout
    pieces = []
    for silence, text in zip(SILENCES_S, UTTERANCES, strict=True):
        pieces += [np.zeros(round(silence * SPEECH_RATE), np.int16), speak(text)]
    spoken = sum(len(p) for p in pieces)
    pieces.append(np.zeros(SECONDS * SPEECH_RATE - spoken, np.int16))
    samples = np.concatenate(pieces)
    flac = out_dir / "speech.flac"
    with av.open(str(flac), "w") as container:
        stream = container.add_stream("flac", rate=SPEECH_RATE, layout="mono", format="s16")
        frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        frame.sample_rate, frame.pts = SPEECH_RATE, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    # The truth is measured on what the file holds, read back.
    written = decode_audio(str(flac), "s16", "mono", SPEECH_RATE)[0]
    intervals = speech_intervals(written, SPEECH_RATE)
    if len(intervals) != len(UTTERANCES):
        raise SystemExit(f"measured {len(intervals)} speech intervals, expected {len(UTTERANCES)}: {intervals}")
    truth = {
        "audio": flac.name,
        "sample_rate": SPEECH_RATE,
        "duration_s": len(written) / SPEECH_RATE,
        "voice": f"{' '.join(ESPEAK[:5])} ({version.split(':')[1].split()[0] if ':' in version else version.strip()})",
        "method": f"{FRAME_S * 1000:.0f} ms frames with RMS above {ACTIVE_DBFS:.0f} dBFS, runs closer than "
        f"{MERGE_GAP_S} s merged, edges out to the first/last sample above that level",
        "utterances": [
            {"text": text, "start_s": round(start, 4), "end_s": round(end, 4)}
            for text, (start, end) in zip(UTTERANCES, intervals, strict=True)
        ],
    }
    (out_dir / "speech.json").write_text(json.dumps(truth, indent=2) + "\n")


def write_av_video(out_dir: Path, speech_dir: Path) -> None:
    """text.mp4's video packets as they are, plus speech.flac as AAC, interleaved by time."""
    speech = json.loads((speech_dir / "speech.json").read_text())
    text_truth = json.loads((out_dir / "text.json").read_text())
    # The same signal on both channels (FFmpeg's own upmix would lower each by 3 dB).
    mono = decode_audio(str(speech_dir / "speech.flac"), "fltp", "mono", AV_AUDIO_RATE)
    audio = np.repeat(mono, 2, axis=0)
    av_path = out_dir / "av.mp4"
    with av.open(str(out_dir / "text.mp4")) as source, av.open(str(av_path), "w") as container:
        video_in = source.streams.video[0]
        video = container.add_stream_from_template(video_in)
        sound = container.add_stream("aac", rate=AV_AUDIO_RATE, layout=AV_AUDIO_LAYOUT)
        sound.bit_rate = 96000
        sound.codec_context.options = {"threads": "1"}
        frame = av.AudioFrame.from_ndarray(audio, format="fltp", layout=AV_AUDIO_LAYOUT)
        frame.sample_rate, frame.pts, frame.time_base = AV_AUDIO_RATE, 0, Fraction(1, AV_AUDIO_RATE)
        # The AAC encoder takes fixed-size frames: let a resampler with frame_size cut them.
        cutter = av.AudioResampler(format="fltp", layout=AV_AUDIO_LAYOUT, rate=AV_AUDIO_RATE, frame_size=1024)
        audio_packets = []
        for chunk in [*cutter.resample(frame), *cutter.resample(None)]:
            audio_packets += sound.encode(chunk)
        audio_packets += sound.encode(None)
        video_packets = [packet for packet in source.demux(video_in) if packet.size]
        for packet in video_packets:
            packet.stream = video
        timeline = sorted(
            [(packet.dts * packet.time_base, 0, i) for i, packet in enumerate(video_packets)]
            + [(packet.dts * packet.time_base, 1, i) for i, packet in enumerate(audio_packets)]
        )
        for _, track, index in timeline:
            container.mux((video_packets, audio_packets)[track][index])
    truth = {
        **text_truth,
        "video": av_path.name,
        "audio": {"codec": "aac", "sample_rate": AV_AUDIO_RATE, "layout": AV_AUDIO_LAYOUT, "from": speech["audio"]},
        "speech": speech["utterances"],
    }
    (out_dir / "av.json").write_text(json.dumps(truth) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default=str(HERE))
    parser.add_argument(
        "--speech", action="store_true", help="speak speech.flac again with espeak-ng and measure speech.json"
    )
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.speech:
        write_speech(out_dir)
        print(f"wrote {out_dir / 'speech.flac'} and {out_dir / 'speech.json'}")
    write_text_video(out_dir)
    print(f"wrote {out_dir / 'text.mp4'} and {out_dir / 'text.json'}")
    speech_dir = out_dir if (out_dir / "speech.flac").is_file() else HERE
    write_av_video(out_dir, speech_dir)
    print(f"wrote {out_dir / 'av.mp4'} and {out_dir / 'av.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
