"""Real photos for the object detector's tests: Darknet's own sample images, as Debian packages
them (``/usr/share/darknet/data/*.jpg`` in the ``darknet`` package; Debian's copyright file gives
them as GPL-3.0+ or MIT or WTFPL). The package is downloaded and unpacked, never installed:
``apt-get download darknet`` and ``dpkg-deb -x``. From them, the object samples: ``dog.mp4`` and
``person.mp4`` (a slow zoom into each photo) and ``crossing.mp4`` (two dogs crossing). Run
``python samples/photos.py [OUT_DIR]`` (default: ``samples/``; the photos go to ``samples/photos``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PHOTOS = ("dog", "person", "horses", "giraffe", "kite", "eagle")
HERE = Path(__file__).resolve().parent


def darknet_photos(into: Path = HERE / "photos") -> dict[str, Path]:
    """``name -> path`` of each photo in ``into``, fetched first if any is missing."""
    wanted = {name: into / f"{name}.jpg" for name in PHOTOS}
    if all(path.is_file() for path in wanted.values()):
        return wanted
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="darknet-deb-") as tmp:
        folder = Path(tmp)
        fetched = subprocess.run(["apt-get", "download", "darknet"], cwd=folder, capture_output=True, text=True)
        packages = list(folder.glob("darknet_*.deb"))
        if not packages:
            raise RuntimeError(f"apt-get download darknet fetched nothing: {fetched.stderr.strip()[-500:]}")
        subprocess.run(["dpkg-deb", "-x", str(packages[0]), str(folder / "x")], check=True)
        for name, path in wanted.items():
            shutil.copyfile(folder / "x/usr/share/darknet/data" / f"{name}.jpg", path)
    return wanted


def pan_video(photo: Path, out: Path, *, seconds: float = 4.0, fps: int = 10, width: int = 640) -> Path:
    """A slow zoom into the middle of ``photo`` (the whole photo to 85% of it), ``width`` pixels
    wide at the photo's aspect, H.264: every object of the photo stays in view, moving a little
    from frame to frame, as under a camera that zooms."""
    import cv2

    image = cv2.imread(str(photo))
    rows, cols = image.shape[:2]
    height = round(width * rows / cols / 2) * 2
    frames = round(seconds * fps)

    def zoomed(index: int) -> Any:
        keep = 1.0 - 0.15 * index / max(1, frames - 1)
        w, h = cols * keep, rows * keep
        x0, y0 = (cols - w) / 2, (rows - h) / 2
        crop = image[round(y0) : round(y0 + h), round(x0) : round(x0 + w)]
        return cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)

    return _write_video(out, (zoomed(index) for index in range(frames)), fps, width, height)


def _write_video(out: Path, frames: Iterable[Any], fps: int, width: int, height: int) -> Path:
    """BGR frames to an H.264 file (a high quality: the detector sees the photo, not the codec)."""
    import av
    import cv2

    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "18"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out


CROSSING = (
    ("dog", (136, 205, 319, 541), 0.6),  # the dog of dog.jpg (its box as YOLOv4-tiny finds it), scaled
    ("person", (62, 260, 200, 350), 1.2),  # the dog of person.jpg
)
"""The two objects of ``crossing_video``: the photo, the patch (x0, y0, x1, y1), its scale."""


def crossing_video(photos: dict[str, Path], out: Path, *, seconds: float = 5.0, fps: int = 10) -> Path:
    """Two dogs (patches of two photos) crossing on a plain 640x360 background, one left to right,
    the other right to left, the second in front where they overlap: a tracker must not swap them."""
    import cv2
    import numpy as np

    width, height = 640, 360
    patches = []
    for photo, (x0, y0, x1, y1), scale in CROSSING:
        patch = cv2.imread(str(photos[photo]))[y0:y1, x0:x1]
        patches.append(cv2.resize(patch, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA))
    frames = round(seconds * fps)
    tops = (60, 150)

    def scene(index: int) -> Any:
        t = index / max(1, frames - 1)
        canvas = np.full((height, width, 3), 128, np.uint8)
        for number, (patch, top) in enumerate(zip(patches, tops, strict=True)):
            rows, cols = patch.shape[:2]
            left = round(20 + (width - cols - 40) * (t if number == 0 else 1 - t))
            canvas[top : top + rows, left : left + cols] = patch
        return canvas

    return _write_video(out, (scene(index) for index in range(frames)), fps, width, height)


def object_samples(into: Path = HERE) -> dict[str, Path]:
    """The object detector's sample videos, made from the photos if missing: ``dog.mp4`` and
    ``person.mp4`` (a slow zoom into each photo) and ``crossing.mp4`` (two dogs crossing)."""
    photos = darknet_photos()
    made = {name: into / f"{name}.mp4" for name in ("dog", "person", "crossing")}
    for name in ("dog", "person"):
        if not made[name].is_file():
            pan_video(photos[name], made[name])
    if not made["crossing"].is_file():
        crossing_video(photos, made["crossing"])
    return made


if __name__ == "__main__":
    for name, path in object_samples(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE).items():
        print(f"{name}: {path}")
