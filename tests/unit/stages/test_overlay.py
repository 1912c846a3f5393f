"""stages.out.overlay and draw: what is drawn where, and nothing drawn for frames nobody watches."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np

import stages  # noqa: F401  (registers the built-in stage types)
from pipeline.media import Item, VideoFrame
from pipeline.pictures import Picture, SceneGeometry, anyone_wants, picture_of
from stages.out.draw import ascii_text, color_of, draw_results
from stages.out.overlay import Overlay, OverlayParams


class Watcher:
    """A stage after the overlay that shows frames, watched or not."""

    def __init__(self, watching: bool) -> None:
        self.watching = watching

    def wants_pictures(self, stream_id: str) -> bool:
        return self.watching


def item(objects: list[dict[str, Any]] | None = None, seq: int = 0) -> Item:
    image = np.full((240, 320, 3), 128, np.uint8)
    frame = VideoFrame(image, seq, Fraction(1, 10), 320, 240)
    it = Item(stream_id="cam", media=frame, capture_time=0.0, seq=seq)
    it.results["det"] = {"type": "object_detection", "model": "m", "objects": objects or []}
    return it


def test_an_object_gets_its_box_in_its_labels_color() -> None:
    image = np.full((240, 320, 3), 128, np.uint8)
    obj = {"label": "dog", "score": 0.9, "box": [50, 60, 150, 200], "track_id": 3}
    draw_results(image, {"det": {"objects": [obj]}}, [], None)
    color = np.array(color_of("dog"))
    assert (image[120, 50] == color).all() and (image[200, 100] == color).all()  # left and bottom edges
    assert (image[120, 100] == 128).all()  # inside: the frame as it was
    assert (image[55, 52] != 128).any()  # the tag above the box


def test_text_quads_zones_lines_and_status_are_drawn() -> None:
    image = np.zeros((240, 320, 3), np.uint8)
    line = {"quad": [[10, 10], [100, 10], [100, 30], [10, 30]], "text": "GATE", "box": [10, 10, 100, 30]}
    results = {
        "ocr": {"type": "text_recognition", "lines": [line]},
        "crops": {"type": "track_crops", "boxes": [{"box": [200, 200, 300, 230], "track_id": 1}]},
    }
    scene = SceneGeometry(
        zones={"left": [(0.0, 100.0), (80.0, 100.0), (80.0, 200.0), (0.0, 200.0)]},
        zone_counts={"left": {"dog": 1}},
        lines={"gate": ((160.0, 0.0), (160.0, 240.0))},
        line_counts={"gate": {"left": 2}},
    )
    draw_results(image, results, [scene], "cam  #0  10 fps  5 ms")
    assert image[20, 10].any() and image[20, 100].any()  # the quad's sides
    assert image[150, 80].any() and image[120, 160].any()  # the zone's side and the line
    assert not image[215, 250].any()  # track_crops repeats boxes drawn elsewhere: not drawn
    assert image[235, 5].any()  # the status line at the bottom left


def test_text_is_ascii_for_opencvs_font() -> None:
    assert ascii_text("Straße 5") == "Stra?e 5"


async def test_nothing_is_drawn_when_nobody_watches(make_ctx) -> None:
    stage = Overlay("overlay", OverlayParams())
    await stage.start(make_ctx("overlay", consumers=(Watcher(False),)))  # type: ignore[arg-type]
    it = item([{"label": "dog", "score": 0.9, "box": [50, 60, 150, 200]}])
    (out,) = await stage.process(it)
    assert "overlay" not in out.tensors and stage.skipped == 1 and stage.drawn == 0


async def test_a_watched_frame_is_drawn_on_a_copy(make_ctx) -> None:
    stage = Overlay("overlay", OverlayParams())
    await stage.start(make_ctx("overlay", consumers=(Watcher(True),)))  # type: ignore[arg-type]
    it = item([{"label": "dog", "score": 0.9, "box": [50, 60, 150, 200]}])
    (out,) = await stage.process(it)
    picture = out.tensors["overlay"]
    assert isinstance(picture, Picture) and picture.image.shape == (240, 320, 3)
    assert (picture.image[120, 50] == np.array(color_of("dog"))).all()
    assert (it.media.bgr()[120, 50] == 128).all()  # the frame itself is untouched
    assert picture_of(out) is picture.image


def test_anyone_wants_asks_only_stages_that_show_frames() -> None:
    assert not anyone_wants([object(), Watcher(False)], "cam")
    assert anyone_wants([object(), Watcher(True)], "cam")
