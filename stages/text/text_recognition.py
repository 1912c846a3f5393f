"""``text_recognition``: CTC decoding for PP-OCR recognizers, joined with the detected boxes (or
the tracked ones ``track_crops`` chose).

The recognizer gives, per time step, a probability over its classes: index 0 is the CTC blank,
then the character dictionary (stored in the ONNX file's metadata under ``character``), then a
space (PaddleOCR's ``use_space_char``). Greedy decoding keeps each step's most likely class,
collapses repeats and drops blanks; a line's score is the mean probability of the steps kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from pipeline.errors import ModelError
from pipeline.media import Item
from pipeline.modelcard import ModelCard, load_model_card
from pipeline.modelstore import model_path
from pipeline.onnxfile import metadata_props
from pipeline.stage import Stage, StageContext, StageParams, register_stage
from pipeline.tensors import ModelOutput

BLANK = 0
CROPPED_FROM = ("text_detection", "track_crops")
"""Results whose ``boxes`` a recognizer's crops may be of: every box, or the tracks ``track_crops`` chose."""
DICTIONARY_KEY = "character"


class TextRecognitionParams(StageParams):
    model: str
    """The recognizer's model card; its ONNX file carries the character dictionary."""
    input: str | None = None
    """The ``infer`` stage whose outputs (one per crop) to decode; defaults to this stage's first input."""
    detections: str | None = None
    """The stage whose boxes the crops are of: a ``text_detection`` stage (default: the one on the
    item) or a ``track_crops`` stage (its lines then carry the ``track_id``)."""
    min_score: float = Field(default=0.5, ge=0, le=1)
    """Lines whose recognition score is lower are left out."""


@register_stage("text_recognition")
class TextRecognition(Stage):
    Params = TextRecognitionParams
    params: TextRecognitionParams
    latency_key = "post"

    def check(self, base_dir: Path) -> None:
        load_model_card(self.params.model, base_dir)

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        self.card = load_model_card(self.params.model, ctx.base_dir)
        self.classes = await ctx.run_blocking(load_ctc_classes, self.card)
        self.source_key = self.params.input or ctx.input_stages[0]

    async def process(self, item: Item) -> Sequence[Item]:
        outputs = item.tensors.pop(self.source_key, None)
        if not (isinstance(outputs, list) and all(isinstance(o, ModelOutput) for o in outputs)):
            raise ValueError(
                f"no list of model outputs from stage {self.source_key!r} on this item "
                "(is it an infer stage fed by a text_crops stage?)"
            )
        detections_key, boxes = self._detections(item)
        if len(boxes) != len(outputs):
            raise ValueError(
                f"{len(outputs)} recognizer outputs from stage {self.source_key!r} "
                f"for {len(boxes)} boxes from stage {detections_key!r}"
            )
        decoded = await self.ctx.run_blocking(self._decode_all, outputs)
        lines = [
            {
                **({"track_id": box["track_id"]} if "track_id" in box else {}),
                "box": box["box"],
                "quad": box["quad"],
                "det_score": box["score"],
                "text": text,
                "score": round(score, 4),
            }
            for box, (text, score) in zip(boxes, decoded, strict=True)
            if score >= self.params.min_score
        ]
        item.results[self.name] = {"type": "text_recognition", "model": self.card.name, "lines": lines}
        return (item,)

    def _detections(self, item: Item) -> tuple[str, list[dict[str, Any]]]:
        """The boxes the crops were cut from: the named result, or the only text_detection one."""
        if self.params.detections is not None:
            key = self.params.detections
            result = item.results.get(key)
            if not (isinstance(result, dict) and result.get("type") in CROPPED_FROM):
                raise ValueError(f"no text_detection or track_crops result from stage {key!r} on this item")
        else:
            found = [k for k, r in item.results.items() if isinstance(r, dict) and r.get("type") == "text_detection"]
            if len(found) != 1:
                raise ValueError(
                    f"expected one text_detection result on this item, found {len(found)} "
                    f"({', '.join(found) or 'none'}): name it in params.detections"
                )
            key = found[0]
            result = item.results[key]
        boxes: list[dict[str, Any]] = result["boxes"]
        return key, boxes

    def _decode_all(self, outputs: list[ModelOutput]) -> list[tuple[str, float]]:
        # The recognizer has one output (the per-step probabilities); take it whatever its name.
        return [ctc_greedy_decode(next(iter(output.outputs.values())), self.classes) for output in outputs]


def ctc_greedy_decode(probabilities: np.ndarray, classes: Sequence[str]) -> tuple[str, float]:
    """(text, score) from a time x classes probability array; ``classes[0]`` is the blank.

    Best class per step, repeats collapsed (a character spanning several steps is read once;
    a blank between two equal ones separates them), blanks dropped. The score is the mean of the
    kept steps' probabilities, 0.0 when nothing is kept (PaddleOCR's ``CTCLabelDecode``).
    """
    if probabilities.ndim != 2 or probabilities.shape[1] != len(classes):
        raise ValueError(
            f"recognizer output has shape {probabilities.shape}; expected (time, {len(classes)}) for its dictionary"
        )
    best = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    keep = np.ones(best.shape, dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    keep &= best != BLANK
    text = "".join(classes[index] for index in best[keep])
    score = float(confidence[keep].mean()) if keep.any() else 0.0
    return text, score


def load_ctc_classes(card: ModelCard) -> tuple[str, ...]:
    """The model's CTC classes: blank (as ""), its dictionary, then a space when the output has
    room for one (PaddleOCR's ``use_space_char``). Checked against the card's class count."""
    path = model_path(card)
    try:
        # Read from the file itself, whatever engine runs the model (a remote server, say).
        metadata = metadata_props(path)
    except ValueError as exc:
        raise ModelError(f"model {card.name!r}: {path} is not a readable ONNX file: {exc}") from None
    if DICTIONARY_KEY not in metadata:
        raise ModelError(f"model {card.name!r}: {path.name} has no {DICTIONARY_KEY!r} dictionary in its metadata")
    # "\n" only: str.splitlines would also split on dictionary entries such as U+2028 or U+0085.
    dictionary = metadata[DICTIONARY_KEY].split("\n")
    if dictionary and dictionary[-1] == "":
        dictionary.pop()
    expected = card.outputs[0].shape[-1]
    if isinstance(expected, int) and expected == len(dictionary) + 1:
        return ("", *dictionary)
    if isinstance(expected, int) and expected != len(dictionary) + 2:
        raise ModelError(
            f"model {card.name!r}: output has {expected} classes, but blank + {len(dictionary)} "
            "dictionary entries (+ space) make neither"
        )
    return ("", *dictionary, " ")
