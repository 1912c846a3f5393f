"""engine: openvino on the real models and samples: the same detections as ONNX Runtime in f32,
reduced precisions that pass their accuracy gate or refuse with the figures, and ``auto`` racing
the two engines on the CPU."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

import stages  # noqa: F401  (registers the task readers the accuracy gate uses)
from pipeline.engines import AutoOptions, RunSettings, create_engine
from pipeline.engines.onnxruntime import OnnxRuntimeEngine, OnnxRuntimeOptions
from pipeline.engines.openvino import STATIC_AFTER, OpenVinoEngine, OpenVinoOptions
from pipeline.errors import ModelError
from pipeline.imaging import prepare_image
from pipeline.modelcard import ModelCard, load_card
from pipeline.modelstore import model_path
from pipeline.precision import MAX_LOSS_POINTS, check_precision
from samples.photos import darknet_photos, object_samples
from stages.objects.yolo import Detections, decode, nms
from tests.integration.support import GUARD_S, ROOT, assert_same_objects, objects_by_seq, run_to_end

PHOTOS = ("dog", "person", "horses")
CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def yolo() -> ModelCard:
    return load_card("yolov4-tiny")


@pytest.fixture(scope="module")
def photos(yolo: ModelCard) -> np.ndarray:
    spec = yolo.preprocess
    assert spec is not None
    images = [cv2.imread(str(darknet_photos()[name])) for name in PHOTOS]
    return np.stack([prepare_image(image, (416, 416), spec.resize, spec).data for image in images])


def detections(card: ModelCard, outputs: dict[str, Any]) -> list[Detections]:
    assert card.yolo is not None
    return [
        nms(decode({name: np.asarray(value)[i] for name, value in outputs.items()}, card.yolo, (416, 416), 0.25), 0.45)
        for i in range(len(next(iter(outputs.values()))))
    ]


def assert_same(found: list[Detections], reference: list[Detections]) -> None:
    for name, got, want in zip(PHOTOS, found, reference, strict=True):
        assert got.classes.tolist() == want.classes.tolist(), name
        np.testing.assert_allclose(got.boxes * 416, want.boxes * 416, atol=1.0, err_msg=name)
        np.testing.assert_allclose(got.scores, want.scores, atol=0.01, err_msg=name)


def test_openvino_f32_finds_what_onnxruntime_finds_at_every_batch_size(yolo: ModelCard, photos: np.ndarray) -> None:
    reference = detections(yolo, OnnxRuntimeEngine(yolo, OnnxRuntimeOptions(providers=CPU)).infer({"input": photos}))
    assert len(reference[0]) >= 3  # a dog, a bicycle, a truck: real detections
    engine = create_engine("openvino", yolo, OpenVinoOptions(), RunSettings(max_batch=4))
    assert engine.description == "openvino[CPU,f32]"
    assert isinstance(engine, OpenVinoEngine)
    for _ in range(STATIC_AFTER):  # on the dynamic model; the last run of a shape has one compiled for it
        assert_same(detections(yolo, engine.infer({"input": photos})), reference)
    deadline = time.monotonic() + GUARD_S
    while not engine.static_shapes and time.monotonic() < deadline:
        time.sleep(0.05)  # compiled in the background
    assert engine.static_shapes == [(("input", (3, 3, 416, 416)),)]
    assert_same(detections(yolo, engine.infer({"input": photos})), reference)  # on the static model
    one = detections(yolo, engine.infer({"input": photos[1:2]}))  # another batch size on the same engine
    assert one[0].classes.tolist() == reference[1].classes.tolist()


def test_throughput_hint_runs_batches_side_by_side_with_the_same_answers(yolo: ModelCard, photos: np.ndarray) -> None:
    engine = create_engine("openvino", yolo, OpenVinoOptions(hint="throughput", streams=2))
    assert engine.max_in_flight == 2
    alone = engine.infer({"input": photos[:1]})

    async def together() -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2) as pool:
            return list(
                await asyncio.gather(
                    *(loop.run_in_executor(pool, engine.infer, {"input": photos[:1]}) for _ in range(4))
                )
            )

    for outputs in asyncio.run(together()):
        for name in alone:
            np.testing.assert_allclose(outputs[name], alone[name], atol=1e-4)


def test_a_device_openvino_does_not_have_is_named_with_those_it_has(yolo: ModelCard) -> None:
    with pytest.raises(ModelError, match=r"OpenVINO has no device 'NPU7'.*available: .*CPU"):
        create_engine("openvino", yolo, OpenVinoOptions(device="NPU7"))


def test_bf16_runs_only_where_the_cpu_has_it_and_only_past_the_gate(yolo: ModelCard) -> None:
    import openvino

    capabilities = [str(c) for c in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    if "BF16" not in capabilities:
        with pytest.raises(ModelError, match=r"precision bf16: the device has no bf16 \(OpenVINO reports .*FP32"):
            create_engine("openvino", yolo, OpenVinoOptions(precision="bf16"))
        return
    try:
        engine = create_engine("openvino", yolo, OpenVinoOptions(precision="bf16"))
    except ModelError as exc:
        assert "fails the accuracy gate: mAP@0.5" in str(exc)
    else:
        assert engine.description == "openvino[CPU,bf16]"


@pytest.mark.parametrize("model", ["yolov4-tiny", "pp-ocrv4-det"])
def test_int8_passes_its_gate_or_refuses_with_the_figures(model: str) -> None:
    card = load_card(model)
    try:
        engine = OpenVinoEngine(card, OpenVinoOptions(precision="int8"))
    except ModelError as exc:
        message = str(exc)
        assert f"model {model!r}: precision int8 fails the accuracy gate: mAP@0.5 " in message
        assert "against f32 on 16 held frames (allowed loss 1 point)" in message
        assert "ms a frame against f32's" in message
        return
    assert engine.description == "openvino[CPU,int8]"
    ours = OpenVinoEngine(card, OpenVinoOptions())
    verdict, model_file = check_precision(ours, "int8", model_path(card))  # the verdict kept
    assert verdict.passed and verdict.score >= 100 - MAX_LOSS_POINTS
    assert model_file.name.startswith("int8-") and model_file.is_file()


def test_auto_precision_takes_a_precision_that_passes_and_logs_why(caplog: pytest.LogCaptureFixture) -> None:
    card = load_card("yolov4-tiny")
    with caplog.at_level(logging.INFO, logger="streamgraph.precision"):
        engine = create_engine("openvino", card, OpenVinoOptions(precision="auto"))
    assert isinstance(engine, OpenVinoEngine)
    chose = next(r.getMessage() for r in caplog.records if "precision auto chose" in r.getMessage())
    assert f"chose {engine.precision} (" in chose
    assert "int8: " in chose and "bf16: " in chose  # each precision tried, and how it did
    if engine.precision != "f32":
        assert "passes" in chose


def test_reduced_precision_needs_frames_to_check_on_and_a_measure_for_the_task(yolo: ModelCard) -> None:
    uncalibrated = yolo.model_copy(update={"calibration": None})
    with pytest.raises(
        ModelError, match=r"calibration and preprocess sections\); this card has none, so it runs in f32"
    ):
        create_engine("openvino", uncalibrated, OpenVinoOptions(precision="int8"))
    with pytest.raises(ModelError, match=r"no accuracy measure for task 'text_recognition' .*it runs in f32 only"):
        create_engine("openvino", load_card("pp-ocrv4-rec"), OpenVinoOptions(precision="int8"))


def test_auto_on_the_cpu_races_both_engines_and_logs_both_figures(caplog: pytest.LogCaptureFixture) -> None:
    card = load_card("pp-ocrv4-det")
    with caplog.at_level(logging.INFO, logger="streamgraph.engine"):
        engine = create_engine("auto", card, AutoOptions(), RunSettings(max_batch=2))
    line = next(r.getMessage() for r in caplog.records if "on the CPU:" in r.getMessage())
    assert f"engine auto chose {engine.description} on the CPU: " in line
    assert "ms a batch of 2 against " in line
    other = "onnxruntime[CPUExecutionProvider]" if engine.description.startswith("openvino") else "openvino[CPU,f32]"
    assert f"against {other}'s " in line


async def test_objects_config_on_openvino_finds_what_onnxruntime_finds(
    nats_server: Any, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """configs/objects.yaml run end to end twice on the person sample, once on each engine: the
    same objects, tracks and boxes (within a pixel), frame by frame."""
    video = str(object_samples()["person"])
    runs = {}
    for engine in ("onnxruntime", "openvino"):
        config = yaml.safe_load((ROOT / "configs" / "objects.yaml").read_text())
        detect = next(stage for stage in config["stages"] if stage["type"] == "infer")
        detect["params"]["engine"] = engine
        path = tmp_path / f"objects-{engine}.yaml"
        path.write_text(yaml.safe_dump(config))
        run = await run_to_end(
            nats_server.url, str(path), "objects", ("person",), env=cli_env, args=("--source", video)
        )
        assert run.returncode == 0, run.stderr[-2000:]
        assert f"on {engine}[" in run.stderr
        runs[engine] = objects_by_seq(run.results["person"])
    assert_same_objects(runs["openvino"], runs["onnxruntime"], frames=40, labels={"person", "dog", "horse"})


async def test_two_batches_side_by_side_keep_every_frame_in_order(
    nats_server: Any, cli_env: dict[str, str], tmp_path: Path
) -> None:
    """The demo with OpenVINO's throughput hint (two infer requests, two model threads, two
    batches of two in flight): every frame published once, in order, with the boxes ONNX Runtime
    finds on the same frame."""
    found = {}
    for engine, extra in (
        ("onnxruntime", {}),
        ("openvino", {"hint": "throughput", "streams": 2, "batch": {"max_size": 2, "max_delay_ms": 5}}),
    ):
        config = yaml.safe_load((ROOT / "configs" / "text-detect.yaml").read_text())
        config["stages"][0]["params"]["path"] = str(ROOT / "samples" / "text.mp4")
        detect = next(stage for stage in config["stages"] if stage["type"] == "infer")
        detect["params"].update(engine=engine, **extra)
        path = tmp_path / f"text-{engine}.yaml"
        path.write_text(yaml.safe_dump(config))
        run = await run_to_end(nats_server.url, str(path), "text-detect", ("sample",), env=cli_env)
        assert run.returncode == 0, run.stderr[-2000:]
        assert f"on {engine}[" in run.stderr
        found[engine] = [(r["seq"], [b["box"] for b in r["results"]["text"]["boxes"]]) for r in run.results["sample"]]
    assert "2 infer request(s)" in run.stderr
    theirs, mine = found["onnxruntime"], found["openvino"]
    assert [seq for seq, _ in mine] == list(range(250))  # every frame once, in order
    for (seq, boxes), (_, reference) in zip(mine, theirs, strict=True):
        assert len(boxes) == len(reference), seq
        for a, b in zip(boxes, reference, strict=True):
            assert max(abs(p - q) for p, q in zip(a, b, strict=True)) <= 1.0, f"frame {seq}: {a} vs {b}"


def resident_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


@pytest.mark.parametrize("name", ["onnxruntime", "openvino"])
def test_an_engine_gives_back_the_memory_bigger_batches_took(name: str, yolo: ModelCard, photos: np.ndarray) -> None:
    options: Any = OnnxRuntimeOptions(providers=CPU) if name == "onnxruntime" else OpenVinoOptions()
    engine = create_engine(name, yolo, options, RunSettings(max_batch=16))
    one, eight = photos[:1], np.concatenate([photos] * 3)[:8]
    reference = detections(yolo, engine.infer({"input": one}))
    before = resident_mb()
    for _ in range(STATIC_AFTER + 1):  # OpenVINO compiles a model for batches of 8 meanwhile
        engine.infer({"input": eight})
    deadline = time.monotonic() + GUARD_S
    while name == "openvino" and not engine.static_shapes and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)
    engine.infer({"input": eight})
    grown = resident_mb() - before
    assert grown > 100, f"batches of 8 took only {grown:.0f} MB more: nothing to give back"
    engine.release_memory(1)
    after_release = detections(yolo, engine.infer({"input": one}))  # ONNX Runtime shrinks during this run
    assert resident_mb() - before < grown / 2, f"{resident_mb() - before:.0f} MB of {grown:.0f} MB still held"
    assert after_release[0].classes.tolist() == reference[0].classes.tolist()
    np.testing.assert_allclose(after_release[0].boxes, reference[0].boxes, atol=1e-4)
    if name == "openvino":
        assert engine.static_shapes == []  # type: ignore[attr-defined]
