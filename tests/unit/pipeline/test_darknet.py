"""pipeline.darknet on a small network of our own: the ONNX model computes what Darknet's layers
compute (checked against numpy), uses every weight float exactly, and is the same bytes every time.
The real YOLOv4-tiny is tests/integration/test_darknet.py's (against OpenCV's own loader)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from pipeline.darknet import DarknetError, convert, parse_cfg

CFG = """
[net]
width=8
height=8
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[route]
layers=-1
groups=2
group_id=1

[upsample]
stride=2

[route]
layers=-1,0

[convolutional]
size=1
stride=1
pad=1
filters=12
activation=linear

[yolo]
mask=0,1
anchors=1,2, 3,4, 5,6
classes=1
scale_x_y=1.05
"""
BN, FIRST, LAST = 4, 4 * 3 * 3 * 3, 12 * 6


def weights(rng: np.random.Generator, floats: int) -> tuple[bytes, dict[str, np.ndarray]]:
    header = np.array([0, 2, 0], np.int32).tobytes() + np.array([12345], np.int64).tobytes()
    values = rng.normal(size=floats).astype(np.float32)
    values[3 * BN : 4 * BN] = np.abs(values[3 * BN : 4 * BN]) + 0.5  # variances are positive
    parts, at = {}, 0
    for name, count in (("b1", BN), ("scale", BN), ("mean", BN), ("var", BN), ("w1", FIRST), ("b2", 12), ("w2", LAST)):
        parts[name] = values[at : at + count]
        at += count
    return header + values.tobytes(), parts


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """A stride-1 convolution, plainly: x [c, h, w], w [f, c, k, k]."""
    k = w.shape[-1]
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    h, wd = x.shape[1:]
    out = np.zeros((w.shape[0], h, wd), np.float64)
    for dy in range(k):
        for dx in range(k):
            out += np.einsum("fc,chw->fhw", w[:, :, dy, dx], padded[:, dy : dy + h, dx : dx + wd])
    return out + b[:, None, None]


def reference(x: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """The network as Darknet computes it, unfolded: conv, batch norm, leaky, and the rest."""
    a = conv(x, p["w1"].reshape(4, 3, 3, 3), np.zeros(4), 1)
    a = (a - p["mean"][:, None, None]) / (np.sqrt(p["var"])[:, None, None] + 1e-6)
    a = a * p["scale"][:, None, None] + p["b1"][:, None, None]
    layer0 = np.where(a > 0, a, 0.1 * a)
    pooled = layer0.reshape(4, 4, 2, 4, 2).max(axis=(2, 4))
    half = pooled[2:]
    upsampled = half.repeat(2, axis=1).repeat(2, axis=2)
    joined = np.concatenate([upsampled, layer0])
    return conv(joined, p["w2"].reshape(12, 6, 1, 1), p["b2"], 0)


def test_the_converted_network_computes_what_darknet_does() -> None:
    rng = np.random.default_rng(3)
    data, parts = weights(rng, 4 * BN + FIRST + 12 + LAST)
    model, heads, size = convert(CFG, data, name="tiny")
    assert size == 8
    assert [(h.output, h.anchors, h.classes, h.scale_x_y) for h in heads] == [("yolo0", [(1, 2), (3, 4)], 1, 1.05)]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    batch = rng.random((2, 3, 8, 8), dtype=np.float32)  # the batch axis is dynamic
    (out,) = session.run(["yolo0"], {"input": batch})
    assert out.shape == (2, 12, 8, 8)
    for image, got in zip(batch, out, strict=True):
        np.testing.assert_allclose(got, reference(image.astype(np.float64), parts), rtol=1e-4, atol=1e-4)
    assert convert(CFG, data, name="tiny")[0] == model  # deterministic: the card checks its sha256


def test_every_weight_float_is_used_exactly() -> None:
    rng = np.random.default_rng(4)
    exact = 4 * BN + FIRST + 12 + LAST
    with pytest.raises(DarknetError, match="1 of 209 weight floats left unused"):
        convert(CFG, weights(rng, exact + 1)[0])
    with pytest.raises(DarknetError, match="the weights end early"):
        convert(CFG, weights(rng, exact - 1)[0])


def test_an_old_weights_file_has_a_32_bit_seen_count() -> None:
    rng = np.random.default_rng(5)
    data, _ = weights(rng, 4 * BN + FIRST + 12 + LAST)
    old = np.array([0, 1, 0, 7], np.int32).tobytes() + data[20:]  # version 0.1: 4-byte seen
    convert(CFG, old)  # consumes exactly: the header was read as 16 bytes, not 20


def test_what_it_cannot_convert_is_named() -> None:
    with pytest.raises(DarknetError, match="starts with \\[net\\]"):
        parse_cfg("[convolutional]\nfilters=1\n")
    with pytest.raises(DarknetError, match="\\[shortcut\\] is not converted"):
        convert("[net]\nwidth=8\nheight=8\n[shortcut]\nfrom=-1\n", np.zeros(5, np.int32).tobytes())
    with pytest.raises(DarknetError, match="activation 'mish' is not converted"):
        cfg = "[net]\nwidth=8\nheight=8\n[convolutional]\nfilters=1\nsize=1\nactivation=mish\n"
        convert(cfg, np.zeros(5, np.int32).tobytes() + np.zeros(4, np.float32).tobytes())
