"""ONNX Runtime engine: checks the file against its card and picks providers from what is installed."""

from __future__ import annotations

import logging
from typing import Any

import onnxruntime as ort

from ..errors import ModelError
from ..modelcard import ModelCard, TensorSpec
from ..modelstore import model_path
from .base import Engine, EngineOptions

log = logging.getLogger("streamgraph.engine.onnxruntime")

# Best first. Only providers this onnxruntime build reports as available are used.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
}


def choose_providers(requested: tuple[str, ...] | None, available: list[str]) -> list[str]:
    """The providers to use, in order: the requested ones (all must exist), else the best installed."""
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ModelError(
                f"ONNX Runtime providers {', '.join(missing)} are not available; this build has {', '.join(available)}"
            )
        return list(requested)
    chosen = [p for p in PREFERRED_PROVIDERS if p in available]
    return chosen or list(available)


class OnnxRuntimeEngine(Engine):
    def __init__(self, card: ModelCard, options: EngineOptions) -> None:
        super().__init__(card)
        path = model_path(card)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = 1
        providers = choose_providers(options.providers, ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(str(path), session_options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelError(f"model {card.name!r}: ONNX Runtime cannot load {path}: {exc}") from None
        self.providers = self._session.get_providers()
        check_signature(card, "input", card.inputs, self._session.get_inputs())
        check_signature(card, "output", card.outputs, self._session.get_outputs())
        self._output_names = [spec.name for spec in card.outputs]
        log.info("model %s loaded with %s", card.name, ", ".join(self.providers))

    @property
    def description(self) -> str:
        return f"onnxruntime[{self.providers[0]}]"

    def infer(self, feeds: dict[str, Any]) -> dict[str, Any]:
        outputs = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, outputs, strict=True))


def check_signature(card: ModelCard, kind: str, specs: list[TensorSpec], actual: list[Any]) -> None:
    """The ONNX file must have exactly the card's tensors, with its dtypes and compatible shapes."""
    by_name = {node.name: node for node in actual}
    expected_names = [spec.name for spec in specs]
    if sorted(by_name) != sorted(expected_names):
        raise ModelError(
            f"model {card.name!r} ({card.card_path}): card lists {kind}s {expected_names}, "
            f"the ONNX file has {sorted(by_name)}"
        )
    for spec in specs:
        node = by_name[spec.name]
        dtype = _ORT_TYPES.get(node.type, node.type)
        if dtype != spec.dtype:
            raise ModelError(
                f"model {card.name!r}: {kind} {spec.name!r} is {dtype} in the file, {spec.dtype} in the card"
            )
        shape = list(node.shape)
        if len(shape) != len(spec.shape):
            raise ModelError(
                f"model {card.name!r}: {kind} {spec.name!r} has shape {shape} in the file, {spec.shape} in the card"
            )
        for file_dim, card_dim in zip(shape, spec.shape, strict=True):
            if isinstance(file_dim, int) and isinstance(card_dim, int) and file_dim != card_dim:
                raise ModelError(
                    f"model {card.name!r}: {kind} {spec.name!r} has shape {shape} in the file, {spec.shape} in the card"
                )
