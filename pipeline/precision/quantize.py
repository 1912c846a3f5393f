"""int8 by post-training static quantization: ONNX Runtime's quantizer (already installed with
ONNX Runtime, so no new dependency) writes a QDQ ONNX file that OpenVINO runs with int8 kernels.

uint8 activations and symmetric per-channel int8 weights, on convolutions and matrix products only
(where int8 pays), and never the layers that make the model's outputs (a detector's logits need
their range): the scheme OpenVINO's CPU plugin ran right and fastest in our measurement (with int8
activations it got the outputs wrong; quantizing every op ran slower than f32). Per-channel weights
need opset 13, so an older file is converted first.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import version_converter

from ..errors import ModelError
from ..modelcard import ModelCard

log = logging.getLogger("streamgraph.precision")

SCHEME = "u8 activations, s8 per-channel symmetric weights, Conv/MatMul/Gemm, outputs kept: v1"
"""Part of a quantized file's cache key: a change of scheme makes new files."""
PER_CHANNEL_OPSET = 13
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]


def output_producers(model: onnx.ModelProto) -> list[str]:
    """The names of the nodes that make the graph's outputs; nodes without a name get one (the
    quantizer excludes nodes by name)."""
    outputs = {output.name for output in model.graph.output}
    for index, node in enumerate(model.graph.node):
        node.name = node.name or f"node_{index}"
    return [node.name for node in model.graph.node if outputs & set(node.output)]


def quantize_int8(card: ModelCard, model_file: Path, inputs: list[np.ndarray], into: Path) -> None:
    """Write ``model_file`` quantized to int8 on ``inputs`` (the card's data input) to ``into``,
    atomically (a run cut short leaves no file a later start would trust)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = card.data_inputs[0].name

    class Frames(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no types
        def __init__(self) -> None:
            self._left: Iterator[np.ndarray] = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            array = next(self._left, None)
            return None if array is None else {name: array}

    into.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into.parent) as work:
        model = onnx.load(str(model_file))
        if model.opset_import[0].version < PER_CHANNEL_OPSET:
            model = version_converter.convert_version(model, PER_CHANNEL_OPSET)
        output_layers = output_producers(model)
        upgraded, prepared, quantized = (Path(work) / n for n in ("upgraded.onnx", "prepared.onnx", "int8.onnx"))
        onnx.save(model, str(upgraded))
        try:
            quant_pre_process(str(upgraded), str(prepared), skip_symbolic_shape=True)
            quantize_static(
                str(prepared),
                str(quantized),
                Frames(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=QUANTIZED_OPS,
                nodes_to_exclude=output_layers,
                extra_options={"WeightSymmetric": True},
            )
        except Exception as exc:  # the quantizer raises its own untyped errors for ops it cannot take
            raise ModelError(f"model {card.name!r}: int8 quantization failed: {exc}") from None
        os.replace(quantized, into)
    log.info("model %s quantized to int8 on %d frames: %s", card.name, len(inputs), into)
