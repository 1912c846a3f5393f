"""stages.textdet: DB post-processing on synthetic probability maps, and the stage around it."""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

import stages  # noqa: F401  (registers the built-in stage types)
from pipeline.config import parse_config
from pipeline.errors import ConfigError
from pipeline.graph import build_graph
from pipeline.media import Item, VideoFrame
from pipeline.tensors import Geometry, ModelOutput
from stages.text.text_detection import TextDetection, TextDetectionParams, db_boxes, order_clockwise

RECT_A = (20, 10, 80, 20)  # x1, y1, x2, y2 (exclusive), the upper one
RECT_B = (100, 50, 180, 70)


def prob_map(*rects, value: float = 0.9, shape=(100, 200)) -> np.ndarray:
    probability = np.zeros(shape, dtype=np.float32)
    for x1, y1, x2, y2 in rects:
        probability[y1:y2, x1:x2] = value
    return probability


def bounds(quad: np.ndarray) -> tuple[float, float, float, float]:
    x1, y1 = quad.min(axis=0)
    x2, y2 = quad.max(axis=0)
    return float(x1), float(y1), float(x2), float(y2)


def shoelace(quad: np.ndarray) -> float:
    x, y = quad[:, 0], quad[:, 1]
    return float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)) / 2.0


def test_two_rectangles_give_two_grown_boxes_in_reading_order():
    boxes = db_boxes(prob_map(RECT_B, RECT_A), TextDetectionParams())
    assert len(boxes) == 2
    for box, (rx1, ry1, rx2, ry2) in zip(boxes, (RECT_A, RECT_B), strict=True):
        assert box.quad.shape == (4, 2)
        assert box.quad.dtype == np.float32
        x1, y1, x2, y2 = bounds(box.quad)
        # Unclipped: strictly larger than the region on every side...
        assert x1 < rx1 and y1 < ry1 and x2 > rx2 and y2 > ry2
        # ...by about DB's unclip distance, area * ratio / perimeter, on each side.
        width, height = rx2 - rx1, ry2 - ry1
        distance = width * height * 1.6 / (2 * (width + height))
        for grown in (rx1 - x1, ry1 - y1, x2 - rx2, y2 - ry2):
            assert grown == pytest.approx(distance, abs=1.5)
        assert 0.5 <= box.score <= 0.9 + 1e-6


def test_larger_unclip_ratio_grows_boxes_more():
    small = db_boxes(prob_map(RECT_A), TextDetectionParams(unclip_ratio=1.0))[0]
    large = db_boxes(prob_map(RECT_A), TextDetectionParams(unclip_ratio=3.0))[0]
    sx1, sy1, sx2, sy2 = bounds(small.quad)
    lx1, ly1, lx2, ly2 = bounds(large.quad)
    assert lx1 < sx1 and ly1 < sy1 and lx2 > sx2 and ly2 > sy2


def test_empty_map_gives_no_boxes():
    assert db_boxes(np.zeros((64, 64), np.float32), TextDetectionParams()) == []


def test_pixels_below_thresh_are_not_text():
    assert db_boxes(prob_map(RECT_A, value=0.25), TextDetectionParams(thresh=0.3)) == []
    assert len(db_boxes(prob_map(RECT_A, value=0.25), TextDetectionParams(thresh=0.2, box_thresh=0.1))) == 1


def test_low_mean_score_boxes_are_discarded():
    probability = prob_map(RECT_A, value=0.4)
    assert db_boxes(probability, TextDetectionParams(box_thresh=0.5)) == []
    kept = db_boxes(probability, TextDetectionParams(box_thresh=0.2))
    assert len(kept) == 1
    assert kept[0].score < 0.5


def test_small_regions_are_discarded():
    tiny = prob_map((50, 50, 70, 51))  # one pixel tall
    assert db_boxes(tiny, TextDetectionParams()) == []


def test_max_candidates_limits_contours():
    probability = prob_map(RECT_A, RECT_B)
    assert len(db_boxes(probability, TextDetectionParams(max_candidates=1))) == 1


def test_rotated_region_gives_a_rotated_clockwise_box():
    probability = np.zeros((200, 200), np.float32)
    rect = ((100.0, 100.0), (120.0, 20.0), 30.0)
    cv2.fillPoly(probability, [cv2.boxPoints(rect).astype(np.int32)], 0.9)
    (box,) = db_boxes(probability, TextDetectionParams())
    quad = box.quad
    assert shoelace(quad) > 0  # clockwise in image coordinates (y down)
    top_edge = quad[1] - quad[0]
    angle = np.degrees(np.arctan2(top_edge[1], top_edge[0]))
    assert abs(angle - 30.0) < 5.0
    assert np.allclose(quad.mean(axis=0), (100.0, 100.0), atol=2.0)


def test_order_clockwise_from_any_order():
    tl, tr, br, bl = [0.0, 0.0], [10.0, 0.0], [10.0, 5.0], [0.0, 5.0]
    expected = np.array([tl, tr, br, bl], dtype=np.float32)
    for shuffled in ([br, tl, bl, tr], [bl, br, tr, tl], [tr, bl, tl, br]):
        ordered = order_clockwise(np.array(shuffled, dtype=np.float32))
        assert ordered.dtype == np.float32
        np.testing.assert_array_equal(ordered, expected)


def test_order_clockwise_on_a_rotated_rectangle():
    corners = cv2.boxPoints(((50.0, 50.0), (60.0, 10.0), 25.0))
    ordered = order_clockwise(corners[[2, 0, 3, 1]])
    assert shoelace(ordered) > 0
    assert sorted(map(tuple, ordered.tolist())) == sorted(map(tuple, corners.tolist()))
    # The first corner is the upper of the two leftmost ones.
    left = corners[np.argsort(corners[:, 0])[:2]]
    np.testing.assert_allclose(ordered[0], left[np.argmin(left[:, 1])])


@pytest.mark.parametrize(
    "params",
    [
        {"thresh": 0.0},
        {"thresh": 1.0},
        {"box_thresh": 1.5},
        {"unclip_ratio": 0},
        {"max_candidates": 0},
        {"min_size": -1},
        {"thresh": "0.3"},
        {"tresh": 0.3},
    ],
)
def test_params_validation(params):
    with pytest.raises(ValidationError):
        TextDetectionParams.model_validate(params)


def test_params_defaults():
    params = TextDetectionParams()
    assert (params.thresh, params.box_thresh, params.unclip_ratio) == (0.3, 0.5, 1.6)
    assert params.input is None


def test_params_errors_in_a_pipeline_name_their_path():
    config = parse_config(
        {
            "pipeline": "p",
            "stages": [
                {"name": "video", "type": "file", "params": {"path": __file__}},
                {"name": "text", "type": "text_detection", "inputs": ["video"], "params": {"box_tresh": 0.2}},
            ],
        }
    )
    with pytest.raises(ConfigError) as info:
        build_graph(config)
    assert str(info.value).startswith("stages[1].params.box_tresh: unknown key (did you mean 'box_thresh'?)")


def frame_item(width: int, height: int) -> Item:
    frame = VideoFrame(np.zeros((height, width, 3), np.uint8), 0, Fraction(1, 30), width, height)
    return Item(stream_id="s", media=frame, capture_time=0.0, seq=0)


async def test_stage_maps_boxes_to_source_pixels(make_ctx):
    stage = TextDetection("text", TextDetectionParams())
    await stage.start(make_ctx("text", input_stages=("det",)))
    probability = prob_map(RECT_A, RECT_B)
    item = frame_item(400, 200)
    # The model ran on a half-size tensor: tensor = source * 0.5.
    item.tensors["det"] = ModelOutput(
        model="pp-ocrv4-det",
        outputs={"maps": probability[None]},
        geometry=Geometry(0.5, 0.5, 0.0, 0.0, 400, 200),
    )
    (out,) = await stage.process(item)
    assert out is item
    assert "det" not in item.tensors  # consumed
    result = item.results["text"]
    assert result["type"] == "text_detection"
    assert result["model"] == "pp-ocrv4-det"
    assert len(result["boxes"]) == 2
    expected = db_boxes(probability, TextDetectionParams())
    for found, box in zip(result["boxes"], expected, strict=True):
        x1, y1, x2, y2 = bounds(box.quad)
        assert found["box"] == pytest.approx([x1 * 2, y1 * 2, x2 * 2, y2 * 2], abs=0.11)
        np.testing.assert_allclose(found["quad"], box.quad * 2, atol=0.11)
        assert found["score"] == pytest.approx(box.score, abs=1e-4)


async def test_stage_reads_the_configured_input(make_ctx):
    stage = TextDetection("text", TextDetectionParams(input="other"))
    await stage.start(make_ctx("text", input_stages=("det",)))
    item = frame_item(200, 100)
    item.tensors["other"] = ModelOutput("m", {"maps": prob_map(RECT_A)[None]}, None)
    await stage.process(item)
    assert len(item.results["text"]["boxes"]) == 1


async def test_stage_without_model_output_fails_the_item(make_ctx):
    stage = TextDetection("text", TextDetectionParams())
    await stage.start(make_ctx("text", input_stages=("det",)))
    with pytest.raises(ValueError, match="no model output from stage 'det'"):
        await stage.process(frame_item(64, 64))
