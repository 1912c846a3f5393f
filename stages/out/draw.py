"""Drawing a result message's findings on a frame with OpenCV: the pure functions ``overlay`` runs.

What is drawn follows the result schema, not the stage that made it, so a user's own stage that
writes the same shapes is drawn too:

* every ``objects`` list: a box per object, labelled ``label score #track_id`` (and the text of
  any ``attributes`` it has);
* every ``boxes`` list (text detection): its ``quad`` (or ``box``), and the text of its
  ``attributes`` (``track_attributes``);
* every ``lines`` list (text recognition): its ``quad`` and the text read;
* zones and lines of an ``object_events`` stage with their counts (``SceneGeometry``);
* a status line: stream, fps, latency.

Text is OpenCV's Hershey font: ASCII only (other characters are drawn as ``?``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import cv2
import numpy as np

from pipeline.pictures import SceneGeometry

FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT_COLOR = (255, 255, 255)
ZONE_COLOR = (0, 200, 255)
LINE_COLOR = (255, 0, 255)
TEXT_BOX_COLOR = (0, 200, 0)
NOT_DRAWN = frozenset({"track_crops"})
"""Result types that repeat boxes drawn from another result already."""


def color_of(label: str) -> tuple[int, int, int]:
    """A steady, saturated BGR color per label (the same in every run)."""
    digest = hashlib.blake2s(label.encode(), digest_size=2).digest()
    hue = digest[0] * 180 // 256
    hsv = np.array([[[hue, 220, 230]]], np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def ascii_text(text: str) -> str:
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)


def label_at(image: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int], scale: float) -> None:
    """``text`` on a filled tag of ``color`` whose bottom-left is at (x, y), kept inside the image."""
    text = ascii_text(text)
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, 1)
    x = max(0, min(x, image.shape[1] - width - 2))
    y = max(height + baseline + 2, y)
    cv2.rectangle(image, (x, y - height - baseline - 2), (x + width + 2, y), color, thickness=cv2.FILLED)
    cv2.putText(image, text, (x + 1, y - baseline - 1), FONT, scale, TEXT_COLOR, 1, cv2.LINE_AA)


def _attribute_text(entry: dict[str, Any]) -> str:
    attributes = entry.get("attributes")
    if not isinstance(attributes, dict):
        return ""
    parts = [str(a.get("text", a.get("label", ""))) for a in attributes.values() if isinstance(a, dict)]
    return " ".join(p for p in parts if p)


def draw_objects(image: np.ndarray, objects: list[dict[str, Any]], scale: float) -> None:
    for obj in objects:
        box = obj.get("box")
        if not (isinstance(box, list) and len(box) == 4):
            continue
        label = str(obj.get("label", ""))
        color = color_of(label)
        x0, y0, x1, y1 = (round(v) for v in box)
        cv2.rectangle(image, (x0, y0), (x1, y1), color, thickness=max(2, round(3 * scale)))
        tag = label
        if isinstance(obj.get("score"), int | float):
            tag += f" {obj['score']:.2f}"
        if "track_id" in obj:
            tag += f" #{obj['track_id']}"
        extra = _attribute_text(obj)
        label_at(image, f"{tag} {extra}".strip(), x0, y0, color, scale)


def draw_text_regions(image: np.ndarray, entries: list[dict[str, Any]], scale: float) -> None:
    """Text boxes (``boxes``) and recognized lines (``lines``): the quad, and the text if any."""
    for entry in entries:
        quad = entry.get("quad")
        if isinstance(quad, list) and len(quad) == 4:
            points = np.round(np.asarray(quad, np.float64)).astype(np.int32)
        elif isinstance(entry.get("box"), list) and len(entry["box"]) == 4:
            x0, y0, x1, y1 = entry["box"]
            points = np.round(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])).astype(np.int32)
        else:
            continue
        cv2.polylines(image, [points], isClosed=True, color=TEXT_BOX_COLOR, thickness=max(2, round(3 * scale)))
        text = str(entry.get("text") or _attribute_text(entry))
        if "track_id" in entry:
            text = f"#{entry['track_id']} {text}".strip()
        if text:
            label_at(image, text, int(points[:, 0].min()), int(points[:, 1].min()), TEXT_BOX_COLOR, scale)


def draw_scene(image: np.ndarray, scene: SceneGeometry, scale: float) -> None:
    for name, polygon in scene.zones.items():
        points = np.round(np.asarray(polygon, np.float64)).astype(np.int32)
        cv2.polylines(image, [points], isClosed=True, color=ZONE_COLOR, thickness=max(2, round(3 * scale)))
        counts = ", ".join(f"{k} {v}" for k, v in sorted(scene.zone_counts.get(name, {}).items()))
        label_at(image, f"{name}: {counts or 'empty'}", int(points[:, 0].min()), int(points[:, 1].min()),
                 ZONE_COLOR, scale)  # fmt: skip
    for name, (a, b) in scene.lines.items():
        start, end = (round(a[0]), round(a[1])), (round(b[0]), round(b[1]))
        cv2.line(image, start, end, LINE_COLOR, thickness=max(2, round(3 * scale)))
        counts = ", ".join(f"{k} {v}" for k, v in sorted(scene.line_counts.get(name, {}).items()))
        label_at(image, f"{name}: {counts or '0'}", min(start[0], end[0]), min(start[1], end[1]), LINE_COLOR, scale)


def draw_status(image: np.ndarray, text: str, scale: float) -> None:
    label_at(image, text, 0, image.shape[0], (40, 40, 40), scale)


def draw_results(image: np.ndarray, results: dict[str, Any], scenes: list[SceneGeometry], status: str | None) -> None:
    """Everything of one frame, in place: scenes under boxes under labels, the status line last."""
    scale = max(0.4, image.shape[0] / 720)
    for scene in scenes:
        draw_scene(image, scene, scale)
    for result in results.values():
        if not isinstance(result, dict) or result.get("type") in NOT_DRAWN:
            continue
        for key in ("boxes", "lines"):
            if isinstance(result.get(key), list):
                draw_text_regions(image, result[key], scale)
        if isinstance(result.get("objects"), list):
            draw_objects(image, result["objects"], scale)
    if status:
        draw_status(image, status, scale)
