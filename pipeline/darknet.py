"""Darknet (``.cfg`` + ``.weights``) to ONNX, with numpy and onnx only: what ``models pull`` runs
for a card whose source says ``convert: darknet`` (YOLOv4-tiny).

The layers YOLOv4-tiny uses, as Darknet computes them:

* ``convolutional``: batch norm folded into the convolution's weights and bias, as Darknet
  normalizes (``(x - mean) / (sqrt(variance) + 1e-6)``, then ``* scale + bias``); ``leaky`` is
  LeakyReLU(0.1), ``linear`` nothing; ``pad=1`` pads by ``size // 2``.
* ``route``: the listed layers concatenated on channels; ``groups``/``group_id`` take one of
  ``groups`` equal channel slices of a single layer (``Split``).
* ``maxpool``: size and stride as given (YOLOv4-tiny: 2x2 stride 2 on even sizes, no padding
  needed); ``upsample``: nearest ``Resize``.
* ``yolo``: the head's raw convolution output is a model output, ``[batch, masks x (5 + classes),
  h, w]``; decoding (sigmoid, grid, anchors, ``scale_x_y``) and NMS are the post stage's, with
  the anchors, masks and scale the card records from the cfg.

The weights file starts with major, minor, revision (int32) and ``seen`` (int64 from version 0.2
on, int32 before); every float after that must be used, exactly (``DarknetError`` otherwise). The
output is deterministic: the same files give the same bytes (the card checks its sha256). The
batch dimension is dynamic (``batch``), the input ``[batch, 3, height, width]`` RGB in 0..1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError

OPSET = 13
LEAKY_SLOPE = 0.1
DARKNET_BN_EPS = 1e-6


class DarknetError(ModelError):
    """A cfg or weights file this converter cannot read, or whose sizes do not match."""


@dataclass
class Section:
    kind: str
    options: dict[str, str] = field(default_factory=dict)

    def integer(self, key: str, default: int | None = None) -> int:
        if key not in self.options:
            if default is None:
                raise DarknetError(f"[{self.kind}] has no {key}=")
            return default
        return int(self.options[key])

    def integers(self, key: str) -> list[int]:
        return [int(part) for part in self.options[key].split(",") if part.strip()]

    def number(self, key: str, default: float) -> float:
        return float(self.options.get(key, default))


@dataclass(frozen=True)
class YoloHead:
    """What the post stage needs of one ``[yolo]`` layer (the card records it)."""

    output: str
    anchors: list[tuple[int, int]]
    """The anchors of this head's mask, in input pixels."""
    classes: int
    scale_x_y: float


def parse_cfg(text: str) -> list[Section]:
    sections: list[Section] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            sections.append(Section(header.group(1)))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise DarknetError(f"cfg line not understood: {raw!r}")
    if not sections or sections[0].kind not in ("net", "network"):
        raise DarknetError("a Darknet cfg starts with [net]")
    return sections


class _Weights:
    """The floats of a ``.weights`` file, taken in order; ``done`` checks none is left."""

    def __init__(self, data: bytes) -> None:
        major, minor, _revision = np.frombuffer(data, np.int32, 3)
        seen_size = 8 if (major * 10 + minor) >= 2 and major < 1000 else 4
        self.version = f"{major}.{minor}"
        self._floats = np.frombuffer(data, np.float32, offset=12 + seen_size)
        self._at = 0

    def take(self, count: int) -> np.ndarray:
        if self._at + count > self._floats.size:
            raise DarknetError(f"the weights end early: {count} floats wanted at {self._at} of {self._floats.size}")
        chunk = self._floats[self._at : self._at + count]
        self._at += count
        return chunk

    def done(self) -> None:
        if self._at != self._floats.size:
            raise DarknetError(f"{self._floats.size - self._at} of {self._floats.size} weight floats left unused")


def convert(cfg_text: str, weights: bytes, *, name: str = "darknet") -> tuple[bytes, list[YoloHead], int]:
    """The ONNX model (serialized), its YOLO heads and its input size (square, from ``[net]``)."""
    # Imported here: only a pull converts, and onnx takes a while to import.
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    sections = parse_cfg(cfg_text)
    net, layers = sections[0], sections[1:]
    height, width, channels = net.integer("height"), net.integer("width"), net.integer("channels", 3)
    if height != width:
        raise DarknetError(f"only square inputs are converted ([net] is {width}x{height})")
    store = _Weights(weights)
    nodes: list[Any] = []
    initializers: list[Any] = []
    outputs: list[tuple[str, int]] = []  # name, channels
    heads: list[YoloHead] = []
    produced: list[tuple[str, int]] = []  # per layer: its output tensor, its channels
    previous, previous_channels = "input", channels

    def constant(tensor_name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), tensor_name))
        return tensor_name

    for index, layer in enumerate(layers):
        out = f"l{index}_{layer.kind}"
        if layer.kind == "convolutional":
            filters, size, stride = layer.integer("filters"), layer.integer("size"), layer.integer("stride", 1)
            pad = size // 2 if layer.integer("pad", 0) else layer.integer("padding", 0)
            if layer.integer("groups", 1) != 1:
                raise DarknetError(f"layer {index}: grouped convolutions are not converted")
            bias = store.take(filters)
            if layer.integer("batch_normalize", 0):
                scale, mean, variance = store.take(filters), store.take(filters), store.take(filters)
                kernel = store.take(filters * previous_channels * size * size).reshape(
                    filters, previous_channels, size, size
                )
                factor = scale / (np.sqrt(variance) + DARKNET_BN_EPS)
                kernel = kernel * factor[:, None, None, None]
                bias = bias - mean * factor
            else:
                kernel = store.take(filters * previous_channels * size * size).reshape(
                    filters, previous_channels, size, size
                )
            activation = layer.options.get("activation", "logistic")
            conv_out = out if activation == "linear" else f"{out}_conv"
            nodes.append(
                helper.make_node(
                    "Conv",
                    [
                        previous,
                        constant(f"{out}_w", kernel.astype(np.float32)),
                        constant(f"{out}_b", bias.astype(np.float32)),
                    ],
                    [conv_out],
                    kernel_shape=[size, size],
                    strides=[stride, stride],
                    pads=[pad, pad, pad, pad],
                )
            )
            if activation == "leaky":
                nodes.append(helper.make_node("LeakyRelu", [conv_out], [out], alpha=LEAKY_SLOPE))
            elif activation != "linear":
                raise DarknetError(f"layer {index}: activation {activation!r} is not converted")
            out_channels = filters
        elif layer.kind == "route":
            sources = [produced[i if i >= 0 else index + i] for i in layer.integers("layers")]
            groups, group_id = layer.integer("groups", 1), layer.integer("group_id", 0)
            if groups > 1:
                if len(sources) != 1:
                    raise DarknetError(f"layer {index}: a grouped route takes one layer")
                (source, source_channels) = sources[0]
                part = source_channels // groups
                parts = [f"{out}_part{g}" for g in range(groups)]
                split = constant(f"{out}_split", np.array([part] * groups, np.int64))
                nodes.append(helper.make_node("Split", [source, split], parts, axis=1))
                out, out_channels = parts[group_id], part
            elif len(sources) == 1:
                out, out_channels = sources[0]
            else:
                nodes.append(helper.make_node("Concat", [s for s, _ in sources], [out], axis=1))
                out_channels = sum(c for _, c in sources)
        elif layer.kind == "maxpool":
            size, stride = layer.integer("size"), layer.integer("stride", 1)
            if size != stride:
                raise DarknetError(f"layer {index}: only maxpool with size == stride is converted")
            nodes.append(
                helper.make_node("MaxPool", [previous], [out], kernel_shape=[size, size], strides=[stride, stride])
            )
            out_channels = previous_channels
        elif layer.kind == "upsample":
            factor = float(layer.integer("stride"))
            scales = constant(f"{out}_scales", np.array([1.0, 1.0, factor, factor], np.float32))
            nodes.append(helper.make_node("Resize", [previous, "", scales], [out], mode="nearest"))
            out_channels = previous_channels
        elif layer.kind == "yolo":
            anchors = layer.integers("anchors")
            pairs = list(zip(anchors[0::2], anchors[1::2], strict=True))
            mask = layer.integers("mask")
            classes = layer.integer("classes")
            if previous_channels != len(mask) * (5 + classes):
                raise DarknetError(f"layer {index}: {previous_channels} channels for {len(mask)} x (5 + {classes})")
            head = f"yolo{len(heads)}"  # the model's outputs, named in order
            nodes.append(helper.make_node("Identity", [previous], [head]))
            heads.append(YoloHead(head, [pairs[m] for m in mask], classes, layer.number("scale_x_y", 1.0)))
            outputs.append((head, previous_channels))
            out, out_channels = previous, previous_channels
        else:
            raise DarknetError(f"layer {index}: [{layer.kind}] is not converted")
        produced.append((out, out_channels))
        previous, previous_channels = out, out_channels
    store.done()

    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, height, width])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch", c, None, None]) for o, c in outputs],
        initializers,
    )
    model = helper.make_model(graph, producer_name="streamgraph", opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # what ONNX Runtime 1.18+ and TensorRT 10 read
    onnx.checker.check_model(model)
    return model.SerializeToString(), heads, width


def convert_files(cfg: Path, weights: Path, into: Path) -> list[YoloHead]:
    data, heads, _ = convert(cfg.read_text(), weights.read_bytes(), name=cfg.stem)
    into.write_bytes(data)
    return heads
