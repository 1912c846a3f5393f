"""stages.textrec: CTC decoding on hand-made probabilities, the dictionary from the ONNX file, the
stage joining lines with their boxes, and the real PP-OCRv4 recognizer on the sample's crops."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import jsonschema
import numpy as np
import pytest
from pydantic import ValidationError

import stages  # noqa: F401  (registers the built-in stage types)
from pipeline.config import parse_config
from pipeline.engines import Engine, create_engine
from pipeline.engines.onnxruntime import OnnxRuntimeOptions
from pipeline.errors import ConfigError, ModelError
from pipeline.graph import build_graph
from pipeline.media import Item, VideoFrame
from pipeline.modelcard import ModelCard, TensorSpec, load_card
from pipeline.results import RESULT_SCHEMA, build_result, encode
from pipeline.stats import StreamCounters
from pipeline.tensors import ModelOutput
from stages.text.text_crops import TextCrops, TextCropsParams
from stages.text.text_recognition import TextRecognition, TextRecognitionParams, ctc_greedy_decode, load_ctc_classes

MODEL = "pp-ocrv4-rec"
OUTPUT = "softmax_11.tmp_0"
CLASSES = ("", "a", "b", "c", " ")  # blank, a tiny dictionary, then the space PaddleOCR appends


def steps(*picks: tuple[int, float]) -> np.ndarray:
    """time x classes probabilities: at each step ``(class, p)``, the rest spread evenly."""
    probabilities = np.empty((len(picks), len(CLASSES)), np.float32)
    for t, (index, p) in enumerate(picks):
        probabilities[t] = (1.0 - p) / (len(CLASSES) - 1)
        probabilities[t, index] = p
    return probabilities


def test_repeats_collapse_and_blanks_drop():
    text, score = ctc_greedy_decode(steps((1, 0.9), (1, 0.8), (0, 0.99), (2, 0.7), (2, 0.6), (0, 0.9)), CLASSES)
    assert text == "ab"
    # Mean over the kept steps only (the first of each run): a@0.9 and b@0.7.
    assert score == pytest.approx((0.9 + 0.7) / 2)


def test_a_blank_between_equal_classes_keeps_both():
    text, _ = ctc_greedy_decode(steps((3, 0.9), (0, 0.9), (3, 0.9), (3, 0.9)), CLASSES)
    assert text == "cc"


def test_the_last_class_is_a_space():
    text, score = ctc_greedy_decode(steps((1, 0.9), (4, 0.6), (4, 0.9), (2, 0.9)), CLASSES)
    assert text == "a b"
    assert score == pytest.approx((0.9 + 0.6 + 0.9) / 3)


def test_only_blanks_read_nothing_with_score_zero():
    assert ctc_greedy_decode(steps((0, 0.9), (0, 0.99)), CLASSES) == ("", 0.0)
    assert ctc_greedy_decode(np.zeros((0, len(CLASSES)), np.float32), CLASSES) == ("", 0.0)


def test_a_mismatched_class_count_is_an_error():
    with pytest.raises(ValueError, match=r"expected \(time, 5\)"):
        ctc_greedy_decode(np.zeros((4, 6), np.float32), CLASSES)


@pytest.fixture(scope="module")
def card() -> ModelCard:
    return load_card(MODEL)


@pytest.fixture(scope="module")
def classes(card: ModelCard) -> tuple[str, ...]:
    return load_ctc_classes(card)


def test_dictionary_comes_from_the_onnx_metadata(classes):
    # blank + 6623 dictionary entries + the appended space = the model's 6625 classes.
    assert len(classes) == 6625
    assert classes[0] == ""
    assert classes[-1] == " "
    assert all(len(c) == 1 for c in classes[1:])
    for character in "STREAMGRAPHDEMOhelloworld0123456789:/":
        assert character in classes


def with_classes(card: ModelCard, count: int) -> ModelCard:
    output = TensorSpec(name=OUTPUT, dtype="float32", shape=["batch", "time", count])
    return card.model_copy(update={"outputs": [output]})


def test_class_count_decides_the_space_and_a_mismatch_is_a_model_error(card, classes):
    without_space = load_ctc_classes(with_classes(card, 6624))
    assert without_space == classes[:-1]
    with pytest.raises(ModelError, match="6630 classes"):
        load_ctc_classes(with_classes(card, 6630))


def det_result(count: int, key_score: float = 0.8) -> dict[str, Any]:
    return {
        "type": "text_detection",
        "model": "pp-ocrv4-det",
        "boxes": [
            {
                "box": [10.0 * i, 0.0, 10.0 * i + 5, 4.0],
                "quad": [[10.0 * i, 0.0], [10.0 * i + 5, 0.0], [10.0 * i + 5, 4.0], [10.0 * i, 4.0]],
                "score": key_score,
            }
            for i in range(count)
        ],
    }


def outputs_reading(*words: str, p: float = 0.9) -> list[ModelOutput]:
    """Recognizer outputs that read ``words``, one per crop, over the tiny dictionary."""
    made = []
    for word in words:
        picks = [(CLASSES.index(ch), p) for ch in word] or [(0, 0.9)]
        probabilities = steps(*[pick for pair in zip(picks, [(0, 0.9)] * len(picks), strict=True) for pick in pair])
        made.append(ModelOutput(model=MODEL, outputs={OUTPUT: probabilities}, geometry=None))
    return made


def item_with(outputs: list[ModelOutput] | None, results: dict[str, Any]) -> Item:
    frame = VideoFrame(np.zeros((8, 8, 3), np.uint8), 0, Fraction(1, 25), 8, 8)
    item = Item(stream_id="s", media=frame, capture_time=0.0, seq=0)
    if outputs is not None:
        item.tensors["rec"] = outputs
    item.results.update(results)
    return item


async def started(make_ctx, **params) -> TextRecognition:
    stage = TextRecognition("ocr", TextRecognitionParams(model=MODEL, **params))
    await stage.start(make_ctx("ocr", input_stages=("rec",)))
    stage.classes = CLASSES  # decode against the tiny dictionary the fake outputs use
    return stage


async def test_stage_joins_each_line_with_its_box(make_ctx):
    stage = await started(make_ctx)
    detections = det_result(2)
    item = item_with(outputs_reading("ab c", "cab", p=0.8), {"text": detections})
    (out,) = await stage.process(item)
    assert out is item
    assert "rec" not in item.tensors  # consumed
    assert item.results["text"] == detections  # the detection result stays
    result = item.results["ocr"]
    assert result["type"] == "text_recognition"
    assert result["model"] == MODEL
    assert [line["text"] for line in result["lines"]] == ["ab c", "cab"]
    for line, box in zip(result["lines"], detections["boxes"], strict=True):
        assert line["box"] == box["box"]
        assert line["quad"] == box["quad"]
        assert line["det_score"] == box["score"]
        assert line["score"] == pytest.approx(0.8, abs=1e-4)


async def test_lines_below_min_score_are_dropped(make_ctx):
    stage = await started(make_ctx, min_score=0.6)
    confident, unsure = outputs_reading("abc", p=0.9)[0], outputs_reading("cc", p=0.5)[0]
    item = item_with([unsure, confident, outputs_reading("")[0]], {"text": det_result(3)})
    await stage.process(item)
    lines = item.results["ocr"]["lines"]
    assert [line["text"] for line in lines] == ["abc"]
    assert lines[0]["box"] == det_result(3)["boxes"][1]["box"]  # still joined with its own box


async def test_no_crops_give_no_lines(make_ctx):
    stage = await started(make_ctx)
    item = item_with([], {"text": det_result(0)})
    await stage.process(item)
    assert item.results["ocr"]["lines"] == []


async def test_detections_are_found_by_type_or_named(make_ctx):
    stage = await started(make_ctx)
    other = {"type": "brightness", "mean": 3.0}
    item = item_with(outputs_reading("a"), {"bright": other, "boxes": det_result(1)})
    await stage.process(item)
    assert item.results["ocr"]["lines"][0]["text"] == "a"

    two = {"a": det_result(1), "b": det_result(2)}
    with pytest.raises(ValueError, match=r"found 2 \(a, b\): name it in params.detections"):
        await stage.process(item_with(outputs_reading("a"), two))
    with pytest.raises(ValueError, match="found 0"):
        await stage.process(item_with(outputs_reading("a"), {}))

    named = await started(make_ctx, detections="b")
    item = item_with(outputs_reading("a", "b"), two)
    await named.process(item)
    assert [line["box"] for line in item.results["ocr"]["lines"]] == [b["box"] for b in two["b"]["boxes"]]
    with pytest.raises(ValueError, match="no text_detection or track_crops result from stage 'b'"):
        await named.process(item_with(outputs_reading("a"), {"a": det_result(1)}))


async def test_counts_that_disagree_fail_the_item(make_ctx):
    stage = await started(make_ctx)
    with pytest.raises(ValueError, match="1 recognizer outputs from stage 'rec' for 2 boxes from stage 'text'"):
        await stage.process(item_with(outputs_reading("a"), {"text": det_result(2)}))


async def test_an_item_without_a_list_of_outputs_fails(make_ctx):
    stage = await started(make_ctx)
    with pytest.raises(ValueError, match="no list of model outputs from stage 'rec'"):
        await stage.process(item_with(None, {"text": det_result(0)}))
    single = outputs_reading("a")[0]
    item = item_with(None, {"text": det_result(1)})
    item.tensors["rec"] = single
    with pytest.raises(ValueError, match="no list of model outputs"):
        await stage.process(item)


async def test_the_published_message_validates_against_the_result_schema(make_ctx):
    validator = jsonschema.Draft202012Validator(json.loads(RESULT_SCHEMA.read_text()))
    stage = await started(make_ctx)
    item = item_with(outputs_reading("ab", "c"), {"text": det_result(2)})
    await stage.process(item)
    message = json.loads(encode(build_result("p", item, StreamCounters())))
    validator.validate(message)
    # The schema knows the text_recognition shape: a line without its text is caught.
    del message["results"]["ocr"]["lines"][0]["text"]
    assert not validator.is_valid(message)


@pytest.mark.parametrize("params", [{}, {"model": MODEL, "min_score": 1.5}, {"model": MODEL, "min_scor": 0.1}])
def test_params_validation(params):
    with pytest.raises(ValidationError):
        TextRecognitionParams.model_validate(params)


def test_unknown_model_is_a_config_error_at_its_path():
    config = parse_config(
        {
            "pipeline": "p",
            "stages": [
                {"name": "video", "type": "file", "params": {"path": __file__}},
                {"name": "ocr", "type": "text_recognition", "inputs": ["video"], "params": {"model": "sg-missing"}},
            ],
        }
    )
    with pytest.raises(ConfigError) as info:
        build_graph(config)
    assert info.value.path == "stages[1].params.model"


# The real recognizer on crops of the sample's first frame.

PAD = 3  # the truth boxes are tight around the glyphs; the detector's boxes have a margin like this


@pytest.fixture(scope="module")
def engine(card: ModelCard) -> Engine:
    return create_engine(
        "onnxruntime", card, OnnxRuntimeOptions(providers=["CPUExecutionProvider"], intra_op_threads=1)
    )


@pytest.fixture(scope="module")
def first_frame(sample_video: Path) -> VideoFrame:
    with av.open(str(sample_video)) as container:
        stream = container.streams.video[0]
        frame = next(container.decode(stream))
        return VideoFrame(frame.to_ndarray(format="bgr24"), frame.pts, stream.time_base, frame.width, frame.height)


@pytest.fixture(scope="module")
def truth(sample_video: Path) -> list[tuple[str, list[int]]]:
    data = json.loads((sample_video.parent / "text.json").read_text())
    return [(line["text"], line["boxes"][0]) for line in data["lines"]]


def truth_detections(truth: list[tuple[str, list[int]]]) -> dict[str, Any]:
    boxes = []
    for _, (x1, y1, x2, y2) in truth:
        x1, y1, x2, y2 = x1 - PAD, y1 - PAD, x2 + PAD, y2 + PAD
        boxes.append({"box": [x1, y1, x2, y2], "quad": [[x1, y1], [x2, y1], [x2, y2], [x1, y2]], "score": 1.0})
    return {"type": "text_detection", "model": "truth", "boxes": boxes}


def run_each(engine: Engine, tensors: list[Any]) -> list[ModelOutput]:
    """What an infer stage does with a list of crops: one request each, outputs in order."""
    outputs = []
    for tensor in tensors:
        result = engine.infer({"x": tensor.data[None]})
        outputs.append(ModelOutput(MODEL, {name: value[0] for name, value in result.items()}, None))
    return outputs


async def test_real_model_reads_the_sample_text(make_ctx, engine, first_frame, truth):
    crops = TextCrops("crops", TextCropsParams(model=MODEL))
    await crops.start(make_ctx("crops", input_stages=("text",)))
    ocr = TextRecognition("ocr", TextRecognitionParams(model=MODEL))
    await ocr.start(make_ctx("ocr", input_stages=("rec",)))

    item = Item(stream_id="sample", media=first_frame, capture_time=0.0, seq=0)
    item.results["text"] = truth_detections(truth)
    await crops.process(item)
    item.tensors["rec"] = run_each(engine, item.tensors.pop("crops"))
    await ocr.process(item)

    lines = item.results["ocr"]["lines"]
    assert [line["text"].strip() for line in lines] == [text for text, _ in truth]
    assert all(line["score"] > 0.9 for line in lines)


async def test_real_model_gives_the_same_output_alone_and_in_a_batch(make_ctx, engine, first_frame, truth):
    crops = TextCrops("crops", TextCropsParams(model=MODEL))
    await crops.start(make_ctx("crops", input_stages=("text",)))
    item = Item(stream_id="sample", media=first_frame, capture_time=0.0, seq=0)
    item.results["text"] = truth_detections(truth)
    await crops.process(item)
    tensors = item.tensors["crops"]
    # Crops with the same padded width stack into one batch; each one's output is what it gets alone.
    by_width: dict[int, list[np.ndarray]] = {}
    for tensor in tensors:
        by_width.setdefault(tensor.data.shape[-1], []).append(tensor.data)
    group = max(by_width.values(), key=len)
    assert len(group) >= 2, f"expected crops sharing a width, got {sorted(by_width)}"
    batched = engine.infer({"x": np.stack(group)})[OUTPUT]
    for index, data in enumerate(group):
        alone = engine.infer({"x": data[None]})[OUTPUT][0]
        np.testing.assert_allclose(batched[index], alone, atol=1e-4)
