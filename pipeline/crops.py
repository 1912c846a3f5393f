"""Crops of a frame as second-model inputs: a text line's quad warped upright and sized for a
recognizer (``text_crops``, ``track_crops``), or an axis-aligned box resized for a fixed-size model.

PaddleOCR's recognition preprocessing: the box's quad is warped upright into a rectangle
(perspective transform, border pixels replicated), a crop at least 1.5 times taller than wide is
turned 90° (vertical text), then it is resized to the model's height keeping its aspect ratio,
normalized, and right-padded with zeros (in normalized space) up to its padded width.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .imaging import prepare_image
from .modelcard import Preprocess
from .tensors import PreparedTensor

VERTICAL_RATIO = 1.5
"""A crop this many times taller than wide is vertical text: PaddleOCR turns it 90° first."""


def crop_quad(image: np.ndarray, quad: np.ndarray) -> np.ndarray:
    """The 4x2 quad (clockwise from top-left, image pixels) warped into an upright rectangle.

    Its size is the longer of each pair of opposite sides, as in PaddleOCR's
    ``get_rotate_crop_image``; a crop at least ``VERTICAL_RATIO`` times taller than wide is turned
    90° counter-clockwise so that the recognizer reads it as a horizontal line.
    """
    quad = np.asarray(quad, dtype=np.float32)
    width = max(1, int(max(np.linalg.norm(quad[0] - quad[1]), np.linalg.norm(quad[2] - quad[3]))))
    height = max(1, int(max(np.linalg.norm(quad[0] - quad[3]), np.linalg.norm(quad[1] - quad[2]))))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    transform = cv2.getPerspectiveTransform(quad, target)
    # Replicated borders: a box that reaches past the frame edge gets edge pixels, not black bars
    # the recognizer could read as a character.
    crop = cv2.warpPerspective(
        image, transform, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
    if height / width >= VERTICAL_RATIO:
        crop = np.ascontiguousarray(np.rot90(crop))
    return crop


def padded_width(
    crop_width: int, crop_height: int, *, height: int, max_width: int, width_bucket: int
) -> tuple[int, int]:
    """(resized width, padded width) of a crop scaled to ``height``: a function of the crop alone."""
    resized = min(max_width, max(1, math.ceil(height * crop_width / crop_height)))
    padded = min(max_width, math.ceil(resized / width_bucket) * width_bucket)
    return resized, padded


def prepare_crop(
    crop: np.ndarray, *, height: int, max_width: int, width_bucket: int, spec: Preprocess
) -> PreparedTensor:
    """BGR uint8 crop -> float32 tensor ``height`` high, zero-padded on the right to its bucket."""
    crop_height, crop_width = crop.shape[:2]
    resized, padded = padded_width(
        crop_width, crop_height, height=height, max_width=max_width, width_bucket=width_bucket
    )
    tensor = prepare_image(crop, (height, resized), "stretch", spec).data
    # Zeros in normalized space, as PaddleOCR pads (mid-grey under PP-OCR's normalization).
    width_axis = 2 if spec.layout == "NCHW" else 1
    pad = [(0, 0)] * tensor.ndim
    pad[width_axis] = (0, padded - resized)
    return PreparedTensor(np.pad(tensor, pad), geometry=None)


def crop_box(image: np.ndarray, box: list[float]) -> np.ndarray:
    """The pixels of an ``[x1, y1, x2, y2]`` box (clipped to the image, at least 1x1)."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (round(v) for v in box)
    x1, y1 = min(max(x1, 0), width - 1), min(max(y1, 0), height - 1)
    x2, y2 = min(max(x2, x1 + 1), width), min(max(y2, y1 + 1), height)
    return image[y1:y2, x1:x2]
