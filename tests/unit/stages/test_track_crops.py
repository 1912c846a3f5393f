"""stages.objects.track_crops and track_attributes: a second model on the new or changed tracks
only, and its answers carried on every frame of their track."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import pytest

import stages  # noqa: F401  (registers the built-in stage types)
from pipeline.crops import crop_box, crop_quad, prepare_crop
from pipeline.imaging import prepare_image
from pipeline.media import EndOfStream, Item, VideoFrame
from pipeline.modelcard import load_card
from stages.objects.track_attributes import TrackAttributes, TrackAttributesParams
from stages.objects.track_crops import LastCrop, TrackCrops, TrackCropsParams, choose
from stages.objects.tracking import TracksEnded

REC = "pp-ocrv4-rec"


def obj(track_id: int, box: list[float], label: str = "person", **extra: Any) -> dict[str, Any]:
    return {"track_id": track_id, "label": label, "box": box, "score": 0.9, **extra}


def last(box: list[float], label: str = "person", at_s: float = 0.0) -> LastCrop:
    return LastCrop(np.asarray(box, np.float64), label, at_s)


def test_new_tracks_are_chosen_and_an_unchanged_one_is_not() -> None:
    objects = [obj(1, [0, 0, 100, 100]), obj(2, [200, 0, 300, 100])]
    chosen = choose(objects, {1: last([1, 0, 101, 100])}, 1.0, TrackCropsParams(model=REC))
    assert [o["track_id"] for o in chosen] == [2]


def test_a_moved_box_a_new_label_or_an_old_crop_is_chosen_again() -> None:
    params = TrackCropsParams(model=REC, changed_iou=0.6, refresh_s=5.0)
    history = {1: last([0, 0, 100, 100]), 2: last([0, 0, 100, 100]), 3: last([0, 0, 100, 100], at_s=0.0)}
    objects = [
        obj(1, [40, 0, 140, 100]),  # IoU 0.43: moved
        obj(2, [0, 0, 100, 100], label="dog"),  # relabelled
        obj(3, [0, 0, 100, 100]),  # unchanged, but its crop is 5 s old
    ]
    assert [o["track_id"] for o in choose(objects, history, 5.0, params)] == [1, 2, 3]
    assert [o["track_id"] for o in choose(objects, history, 4.9, params)] == [1, 2]


def test_new_tracks_come_first_then_the_most_changed_up_to_the_bound() -> None:
    history = {1: last([0, 0, 100, 100]), 2: last([0, 0, 100, 100])}
    objects = [obj(1, [30, 0, 130, 100]), obj(2, [80, 0, 180, 100]), obj(3, [0, 200, 50, 250])]
    params = TrackCropsParams(model=REC, max_per_frame=2)
    assert [o["track_id"] for o in choose(objects, history, 1.0, params)] == [3, 2]


def test_only_the_labels_asked_for() -> None:
    objects = [obj(1, [0, 0, 10, 10], label="dog"), obj(2, [0, 0, 10, 10], label="person")]
    params = TrackCropsParams(model=REC, labels=["person"])
    assert [o["track_id"] for o in choose(objects, {}, 0.0, params)] == [2]


def frame_item(image: np.ndarray, objects: list[dict[str, Any]], *, seq: int = 0, ended: list[int] = ()) -> Item:
    height, width = image.shape[:2]
    frame = VideoFrame(image, seq, Fraction(1, 25), width, height)
    item = Item(stream_id="s", media=frame, capture_time=0.0, seq=seq)
    item.results["det"] = {"type": "object_detection", "model": "m", "objects": objects}
    item.tensors["tracks"] = TracksEnded(list(ended), "det")
    return item


def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)


async def test_the_stage_crops_text_quads_for_a_recognizer_and_says_of_which_tracks(make_ctx) -> None:
    stage = TrackCrops("crops", TrackCropsParams(model=REC))
    await stage.start(make_ctx("crops", input_stages=("tracks",)))
    pixels = image()
    quad = [[10.0, 10.0], [90.0, 10.0], [90.0, 34.0], [10.0, 34.0]]
    text = obj(4, [10, 10, 90, 34], label="", quad=quad, age_s=0.0, velocity=[0.0, 0.0])
    item = frame_item(pixels, [text])
    await stage.process(item)
    spec = load_card(REC).preprocess
    assert spec is not None
    expected = prepare_crop(crop_quad(pixels, np.asarray(quad, np.float32)), height=48, max_width=320,
                            width_bucket=32, spec=spec)  # fmt: skip
    (tensor,) = item.tensors["crops"]
    np.testing.assert_array_equal(tensor.data, expected.data)
    assert item.results["crops"] == {
        "type": "track_crops",
        "model": REC,
        "boxes": [{"track_id": 4, "label": "", "box": [10, 10, 90, 34], "quad": quad, "score": 0.9}],
    }
    # The next frame, unchanged: nothing to crop, an empty list for the infer stage.
    again = frame_item(pixels, [text], seq=1)
    await stage.process(again)
    assert again.tensors["crops"] == [] and again.results["crops"]["boxes"] == []


async def test_a_fixed_size_model_gets_the_box_resized_as_its_card_says(make_ctx) -> None:
    stage = TrackCrops("crops", TrackCropsParams(model="yolov4-tiny"))
    await stage.start(make_ctx("crops", input_stages=("tracks",)))
    pixels = image()
    item = frame_item(pixels, [obj(1, [20.4, 30.6, 120.2, 100.0])])
    await stage.process(item)
    spec = load_card("yolov4-tiny").preprocess
    assert spec is not None
    expected = prepare_image(crop_box(pixels, [20.4, 30.6, 120.2, 100.0]), (416, 416), spec.resize, spec)
    (tensor,) = item.tensors["crops"]
    assert tensor.data.shape == (3, 416, 416) and tensor.geometry is None
    np.testing.assert_array_equal(tensor.data, expected.data)


def test_crop_box_clips_to_the_image() -> None:
    pixels = image()
    assert crop_box(pixels, [-5, -5, 10, 8]).shape == (8, 10, 3)
    assert crop_box(pixels, [190, 110, 400, 400]).shape == (10, 10, 3)
    assert crop_box(pixels, [300, 300, 310, 310]).shape == (1, 1, 3)  # outside: one edge pixel


async def test_an_ended_track_and_an_ended_stream_are_forgotten(make_ctx) -> None:
    stage = TrackCrops("crops", TrackCropsParams(model="yolov4-tiny"))
    await stage.start(make_ctx("crops", input_stages=("tracks",)))
    pixels = image()
    await stage.process(frame_item(pixels, [obj(1, [0, 0, 50, 50])]))
    assert set(stage.last["s"]) == {1}
    await stage.process(frame_item(pixels, [], seq=1, ended=[1]))
    assert stage.last["s"] == {}
    await stage.on_stream_ended(EndOfStream("s"))
    assert "s" not in stage.last


async def test_attributes_are_carried_on_every_frame_of_their_track(make_ctx) -> None:
    stage = TrackAttributes("lines", TrackAttributesParams())
    await stage.start(make_ctx("lines", input_stages=("ocr",)))
    pixels = image()
    first = frame_item(pixels, [obj(1, [0, 0, 50, 20]), obj(2, [0, 30, 50, 50])])
    first.results["ocr"] = {
        "type": "text_recognition",
        "model": REC,
        "lines": [{"track_id": 1, "box": [0, 0, 50, 20], "quad": [], "det_score": 0.9, "text": "GATE", "score": 0.99}],
    }
    await stage.process(first)
    objects = first.results["det"]["objects"]
    assert objects[0]["attributes"] == {"ocr": {"det_score": 0.9, "text": "GATE", "score": 0.99}}
    assert "attributes" not in objects[1]  # not read yet
    # A later frame where the recognizer did not run: the text is still there.
    later = frame_item(pixels, [obj(1, [1, 0, 51, 20])], seq=1)
    later.results["ocr"] = {"type": "text_recognition", "model": REC, "lines": []}
    await stage.process(later)
    assert later.results["det"]["objects"][0]["attributes"]["ocr"]["text"] == "GATE"
    # Track 1 ends, and a new track that happens to reuse nothing gets nothing.
    gone = frame_item(pixels, [], seq=2, ended=[1])
    await stage.process(gone)
    assert stage.known["s"] == {}


async def test_keep_and_name_params(make_ctx) -> None:
    stage = TrackAttributes("attrs", TrackAttributesParams(input="ocr", name="plate", keep=["text"]))
    await stage.start(make_ctx("attrs", input_stages=("rec",)))
    item = frame_item(image(), [obj(3, [0, 0, 5, 5])])
    item.results["ocr"] = {"type": "x", "found": [{"track_id": 3, "box": [0, 0, 5, 5], "text": "AB1", "score": 1}]}
    await stage.process(item)
    assert item.results["det"]["objects"][0]["attributes"] == {"plate": {"text": "AB1"}}


async def test_without_a_track_stage_on_the_item_the_error_says_so(make_ctx) -> None:
    stage = TrackAttributes("lines", TrackAttributesParams())
    await stage.start(make_ctx("lines", input_stages=("ocr",)))
    item = frame_item(image(), [])
    del item.tensors["tracks"]
    with pytest.raises(ValueError, match="expected one track stage's tracks on this item, found 0"):
        await stage.process(item)
