"""Render the sample media that the demo and the tests run on.

Deterministic: the same Pillow (its embedded Aileron font) and PyAV versions give byte-identical
files, so ground truth and video always agree. Run ``python samples/make_samples.py [OUT_DIR]``;
it writes ``text.mp4`` (H.264, 640x360, 25 fps, 10 s) and ``text.json`` (the text of every line
and its tight box in every frame).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default=str(Path(__file__).resolve().parent))
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_video(out_dir)
    print(f"wrote {out_dir / 'text.mp4'} and {out_dir / 'text.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
