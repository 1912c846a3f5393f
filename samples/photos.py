"""Real photos for the object detector's tests: Darknet's own sample images, as Debian packages
them (``/usr/share/darknet/data/*.jpg`` in the ``darknet`` package; Debian's copyright file gives
them as GPL-3.0+ or MIT or WTFPL). The package is downloaded and unpacked, never installed:
``apt-get download darknet`` and ``dpkg-deb -x``. Run ``python samples/photos.py [OUT_DIR]``
(default: ``samples/photos``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

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


if __name__ == "__main__":
    for name, path in darknet_photos(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "photos").items():
        print(f"{name}: {path}")
