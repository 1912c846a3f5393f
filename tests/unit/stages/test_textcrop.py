"""stages.textcrop: quad crops, vertical text, width buckets, and the stage around them."""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

import stages  # noqa: F401  (registers the built-in stage types)
from pipeline.config import parse_config
from pipeline.crops import crop_quad, padded_width, prepare_crop
from pipeline.errors import ConfigError
from pipeline.graph import build_graph
from pipeline.imaging import prepare_image
from pipeline.media import EncodedPacket, Item, VideoFrame
from pipeline.modelcard import Preprocess, load_card
from pipeline.tensors import PreparedTensor
from stages.text.text_crops import TextCrops, TextCropsParams
from stages.text.text_detection import order_clockwise

MODEL = "pp-ocrv4-rec"
SPEC = load_card(MODEL).preprocess
assert SPEC is not None


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def rect(x1: float, y1: float, x2: float, y2: float) -> np.ndarray:
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float32)


def test_an_axis_aligned_quad_crops_exactly_its_pixels():
    image = noise(60, 80)
    crop = crop_quad(image, rect(10, 20, 50, 30))
    assert crop.shape == (10, 40, 3)
    np.testing.assert_array_equal(crop, image[20:30, 10:50])


def test_a_rotated_quad_is_warped_upright():
    # A 40x10 rectangle of one color, rotated by 30 degrees on a black image: the crop is 40x10
    # and (away from its interpolated border) entirely that color.
    image = np.zeros((100, 100, 3), np.uint8)
    corners = cv2.boxPoints(((50.0, 50.0), (40.0, 10.0), 30.0))
    cv2.fillPoly(image, [np.round(corners).astype(np.int32)], (0, 200, 100))
    crop = crop_quad(image, order_clockwise(corners))
    assert crop.shape[:2] in ((10, 40), (10, 39), (9, 40))
    inner = crop[2:-2, 2:-2].reshape(-1, 3)
    assert np.abs(inner.astype(int) - (0, 200, 100)).max() <= 40
    assert np.median(inner, axis=0).tolist() == [0, 200, 100]


def test_tall_crops_are_turned_to_read_horizontally():
    image = noise(80, 80)
    tall = crop_quad(image, rect(10, 10, 20, 40))  # 10 wide, 30 high: vertical text
    assert tall.shape == (10, 30, 3)
    np.testing.assert_array_equal(tall, np.rot90(image[10:40, 10:20]))  # counter-clockwise, as PaddleOCR
    # Just under 1.5 times taller than wide stays as it is.
    upright = crop_quad(image, rect(10, 10, 30, 39))
    assert upright.shape == (29, 20, 3)
    np.testing.assert_array_equal(upright, image[10:39, 10:30])


def test_boxes_past_the_frame_edge_replicate_border_pixels():
    image = np.full((20, 20, 3), 77, np.uint8)
    crop = crop_quad(image, rect(10, 5, 30, 15))
    assert crop.shape == (10, 20, 3)
    assert (crop == 77).all()  # no black bars the recognizer could read


@pytest.mark.parametrize(
    ("crop_w", "crop_h", "expected"),
    [
        (100, 48, (100, 128)),  # rounded up to the next bucket
        (128, 48, (128, 128)),  # already a multiple
        (10, 30, (16, 32)),  # small: scaled up to height 48 first
        (50, 25, (96, 96)),  # 2:1 -> 96 wide at height 48
        (400, 30, (320, 320)),  # wider than max_width at height 48: squeezed
        (310, 48, (310, 320)),  # bucket rounding never exceeds max_width
    ],
)
def test_padded_width_depends_on_the_crop_alone(crop_w, crop_h, expected):
    assert padded_width(crop_w, crop_h, height=48, max_width=320, width_bucket=32) == expected


def test_prepare_crop_resizes_normalizes_and_pads_with_zeros():
    crop = noise(24, 50)  # 2:1 -> 100 wide at height 48, padded to 128
    tensor = prepare_crop(crop, height=48, max_width=320, width_bucket=32, spec=SPEC)
    assert isinstance(tensor, PreparedTensor)
    assert tensor.geometry is None
    assert tensor.data.shape == (3, 48, 128)
    assert tensor.data.dtype == np.float32
    expected = prepare_image(crop, (48, 100), "stretch", SPEC).data
    np.testing.assert_array_equal(tensor.data[:, :, :100], expected)
    assert (tensor.data[:, :, 100:] == 0).all()
    # PP-OCR's normalization: (x / 255 - 0.5) / 0.5, BGR kept.
    assert float(tensor.data.min()) >= -1.0 and float(tensor.data.max()) <= 1.0
    flat = np.full((24, 50, 3), (0, 255, 51), np.uint8)
    channels = prepare_crop(flat, height=48, max_width=320, width_bucket=32, spec=SPEC).data[:, 0, 0]
    np.testing.assert_allclose(channels, [-1.0, 1.0, -0.6], atol=1e-6)


def test_wide_crops_are_squeezed_to_max_width():
    tensor = prepare_crop(noise(20, 400), height=48, max_width=320, width_bucket=32, spec=SPEC)
    assert tensor.data.shape == (3, 48, 320)
    assert (tensor.data[:, :, -1] != 0).any()  # squeezed, not cut: the last column is image


def test_nhwc_cards_are_padded_along_their_width_axis():
    spec = Preprocess(layout="NHWC", color="rgb", size=[48, 320])
    tensor = prepare_crop(noise(24, 50), height=48, max_width=320, width_bucket=32, spec=spec)
    assert tensor.data.shape == (48, 128, 3)
    assert (tensor.data[:, 100:, :] == 0).all()


def frame_item(image: np.ndarray, boxes: list[np.ndarray], key: str = "text") -> Item:
    height, width = image.shape[:2]
    item = Item(stream_id="s", media=VideoFrame(image, 0, Fraction(1, 25), width, height), capture_time=0.0, seq=0)
    item.results[key] = {
        "type": "text_detection",
        "model": "pp-ocrv4-det",
        "boxes": [{"box": [0, 0, 1, 1], "quad": quad.tolist(), "score": 0.9} for quad in boxes],
    }
    return item


async def started(make_ctx, **params) -> TextCrops:
    stage = TextCrops("crops", TextCropsParams(model=MODEL, **params))
    await stage.start(make_ctx("crops", input_stages=("text",)))
    return stage


async def test_stage_gives_one_tensor_per_box_in_box_order(make_ctx):
    stage = await started(make_ctx)
    image = noise(200, 300)
    boxes = [rect(10, 10, 60, 34), rect(0, 100, 300, 130), rect(100, 50, 110, 80)]
    item = frame_item(image, boxes)
    (out,) = await stage.process(item)
    assert out is item
    assert item.results["text"]["boxes"]  # the detections stay
    tensors = item.tensors["crops"]
    assert isinstance(tensors, list) and len(tensors) == 3
    assert all(isinstance(t, PreparedTensor) and t.geometry is None for t in tensors)
    # 50x24 -> 100 wide -> 128; 300x30 -> squeezed to 320; 10x30 is vertical: 30x10 -> 144 -> 160.
    assert [t.data.shape for t in tensors] == [(3, 48, 128), (3, 48, 320), (3, 48, 160)]
    for tensor, quad in zip(tensors, boxes, strict=True):
        expected = prepare_crop(crop_quad(image, quad), height=48, max_width=320, width_bucket=32, spec=SPEC)
        np.testing.assert_array_equal(tensor.data, expected.data)


async def test_a_crop_tensor_does_not_depend_on_the_other_boxes(make_ctx):
    stage = await started(make_ctx)
    image = noise(200, 300)
    alone = frame_item(image, [rect(10, 10, 60, 34)])
    crowded = frame_item(image, [rect(0, 100, 300, 130), rect(10, 10, 60, 34), rect(5, 150, 200, 190)])
    await stage.process(alone)
    await stage.process(crowded)
    np.testing.assert_array_equal(alone.tensors["crops"][0].data, crowded.tensors["crops"][1].data)


async def test_bucket_and_max_width_params(make_ctx):
    stage = await started(make_ctx, width_bucket=8, max_width=96)
    item = frame_item(noise(200, 300), [rect(10, 10, 60, 34), rect(0, 100, 300, 130)])
    await stage.process(item)
    assert [t.data.shape for t in item.tensors["crops"]] == [(3, 48, 96), (3, 48, 96)]
    item = frame_item(noise(200, 300), [rect(10, 10, 31, 34)])  # 21x24 -> 42 wide -> 48
    await stage.process(item)
    assert item.tensors["crops"][0].data.shape == (3, 48, 48)


async def test_no_boxes_give_an_empty_list(make_ctx):
    stage = await started(make_ctx)
    item = frame_item(noise(50, 50), [])
    await stage.process(item)
    assert item.tensors["crops"] == []


async def test_detections_param_names_the_result_to_crop(make_ctx):
    stage = await started(make_ctx, detections="other")
    item = frame_item(noise(50, 50), [rect(1, 1, 30, 20)], key="other")
    await stage.process(item)
    assert len(item.tensors["crops"]) == 1


async def test_item_without_detections_fails(make_ctx):
    stage = await started(make_ctx)
    item = frame_item(noise(50, 50), [], key="elsewhere")
    with pytest.raises(ValueError, match="no text boxes from stage 'text'"):
        await stage.process(item)


async def test_items_without_a_frame_pass_through(make_ctx):
    stage = await started(make_ctx)
    item = Item(stream_id="s", media=EncodedPacket(None, 0, Fraction(1, 25), True), capture_time=0.0)
    assert await stage.process(item) == (item,)
    assert item.tensors == {}


@pytest.mark.parametrize("params", [{}, {"model": MODEL, "width_bucket": 0}, {"model": MODEL, "max_width": 0}])
def test_params_validation(params):
    with pytest.raises(ValidationError):
        TextCropsParams.model_validate(params)


def test_unknown_model_is_a_config_error_at_its_path():
    config = parse_config(
        {
            "pipeline": "p",
            "stages": [
                {"name": "video", "type": "file", "params": {"path": __file__}},
                {"name": "crops", "type": "text_crops", "inputs": ["video"], "params": {"model": "sg-unit-missing"}},
            ],
        }
    )
    with pytest.raises(ConfigError) as info:
        build_graph(config)
    assert info.value.path == "stages[1].params.model"
