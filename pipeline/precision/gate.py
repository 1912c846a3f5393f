"""The accuracy gate: a reduced precision against f32 on held frames, and the choice it leads to."""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from ..accuracy import agreement, box_reader, metric_name
from ..errors import ModelError
from ..modelcard import ModelCard
from ..modelstore import cache_dir
from .calibration import CalibrationSet, calibration_set
from .quantize import SCHEME, quantize_int8

log = logging.getLogger("streamgraph.precision")

MAX_LOSS_POINTS = 1.0
"""How far below f32's 100 points a reduced precision may score and still be used."""

Precision = Literal["f32", "bf16", "int8"]
REDUCED: tuple[Precision, ...] = ("int8", "bf16")
"""What ``auto`` tries, in this order, before f32."""


class Runs(Protocol):
    def infer(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]: ...

    def settle(self, feeds: dict[str, Any]) -> None:
        """Make ready for inputs shaped like ``feeds`` (blocking), so timings are of steady runs."""

    def close(self) -> None: ...


class PrecisionTarget(Protocol):
    """An engine that can run a model at several precisions (``OpenVinoEngine``)."""

    card: ModelCard

    @property
    def runtime(self) -> str:
        """What runs the model (runtime, version, device): part of a verdict's cache key."""

    def unsupported(self, precision: Precision) -> str | None:
        """Why the device cannot run ``precision``, or None."""

    def compile(self, model_file: Path, precision: Precision) -> Runs: ...


@dataclass(frozen=True)
class Verdict:
    precision: str
    score: float
    """The reduced model's findings scored with f32's as the truth, in points (f32: 100)."""
    metric: str
    frames: int
    ms: float
    """Median milliseconds a frame (batch 1) at this precision, measured with f32's ``f32_ms``."""
    f32_ms: float

    @property
    def passed(self) -> bool:
        return self.score >= 100.0 - MAX_LOSS_POINTS

    def figures(self) -> str:
        return (
            f"{self.metric} {self.score:.1f} against f32 on {self.frames} held frames (allowed loss "
            f"{MAX_LOSS_POINTS:g} point), {self.ms:.1f} ms a frame against f32's {self.f32_ms:.1f}"
        )


@dataclass(frozen=True)
class PrecisionChoice:
    precision: Precision
    model_file: Path
    why: str


def choose_precision(target: PrecisionTarget, wanted: str, path: Path) -> PrecisionChoice:
    """The precision to run ``target``'s card at: ``wanted`` if it passes the gate (a
    ``ModelError`` with the figures if not), or for ``auto`` the fastest that passes, f32 included."""
    card = target.card
    if wanted != "auto":
        precision: Precision = "int8" if wanted == "int8" else "bf16"
        problem = target.unsupported(precision)
        if problem is not None:
            raise ModelError(f"model {card.name!r}: precision {precision}: {problem}; use f32 or auto")
        verdict, model_file = check_precision(target, precision, path)
        if not verdict.passed:
            raise ModelError(
                f"model {card.name!r}: precision {precision} fails the accuracy gate: {verdict.figures()}; "
                "use precision f32, or auto to take the best that passes"
            )
        log.info("model %s: precision %s passes the accuracy gate: %s", card.name, precision, verdict.figures())
        return PrecisionChoice(precision, model_file, verdict.figures())
    return _fastest_passing(target, path)


def _fastest_passing(target: PrecisionTarget, path: Path) -> PrecisionChoice:
    card = target.card
    notes: list[str] = []
    passing: list[tuple[Verdict, Path]] = []
    f32_ms: list[float] = []
    frames: CalibrationSet | None = None  # decoded once, for every precision tried
    for precision in REDUCED:
        problem = target.unsupported(precision)
        if problem is not None:
            notes.append(f"{precision}: {problem}")
            continue
        try:
            frames = frames or checkable_frames(card)
            verdict, model_file = check_precision(target, precision, path, frames)
        except ModelError as exc:
            notes.append(f"{precision}: {exc}")
            continue
        f32_ms.append(verdict.f32_ms)
        notes.append(f"{precision}: {'passes' if verdict.passed else 'fails'}, {verdict.figures()}")
        if verdict.passed:
            passing.append((verdict, model_file))
    best = min(passing, key=lambda entry: entry[0].ms, default=None)
    if best is not None and best[0].ms < min(f32_ms):
        verdict, model_file = best
        chosen = PrecisionChoice("int8" if verdict.precision == "int8" else "bf16", model_file, "; ".join(notes))
    else:
        chosen = PrecisionChoice("f32", path, "; ".join(notes) or "no reduced precision to try")
    log.info("model %s: precision auto chose %s (%s)", card.name, chosen.precision, chosen.why)
    return chosen


def checkable_frames(card: ModelCard) -> CalibrationSet:
    """The card's calibration frames; a ``ModelError`` for a task without a measure comes first,
    before any video is decoded."""
    box_reader(card)
    return calibration_set(card)


def check_precision(
    target: PrecisionTarget, precision: Precision, path: Path, frames: CalibrationSet | None = None
) -> tuple[Verdict, Path]:
    """``precision``'s verdict against f32 and the model file it runs (int8: the quantized one),
    from the cache when this model, these frames and this runtime were checked before. ``frames``:
    the card's calibration frames, if the caller has them already."""
    card = target.card
    frames = frames or checkable_frames(card)
    model_file = path if precision != "int8" else int8_model(card, path, frames)
    key = _digest(card.sha256, precision, frames.digest, target.runtime, _quantizer_version(precision))
    where = cache_dir() / "precision" / card.sha256[:16] / f"{precision}-{key[:16]}.json"
    try:
        return Verdict(**json.loads(where.read_text())), model_file
    except (OSError, ValueError, TypeError):
        pass  # not checked yet (or a file that is not a verdict): check now
    verdict = measure(target, precision, path, model_file, frames)
    where.parent.mkdir(parents=True, exist_ok=True)
    where.write_text(json.dumps(asdict(verdict)))
    return verdict, model_file


def int8_model(card: ModelCard, path: Path, frames: CalibrationSet) -> Path:
    """The card's model quantized to int8 on ``frames``, made once and kept."""
    key = _digest(card.sha256, frames.digest, _quantizer_version("int8"))
    into = cache_dir() / "precision" / card.sha256[:16] / f"int8-{key[:16]}.onnx"
    if not into.is_file():
        log.info("model %s: quantizing to int8 on %d frames (once; kept at %s)", card.name, len(frames.quantize), into)
        quantize_int8(card, path, frames.quantize, into)
    return into


def measure(
    target: PrecisionTarget, precision: Precision, path: Path, model_file: Path, frames: CalibrationSet
) -> Verdict:
    """Run the held frames through f32 and ``precision``; score and time them."""
    card = target.card
    name = card.data_inputs[0].name
    reference, reference_ms = _run_held(target.compile(path, "f32"), name, frames.held)
    candidate, candidate_ms = _run_held(target.compile(model_file, precision), name, frames.held)
    score = agreement(card, reference, candidate)
    return Verdict(precision, round(score, 2), metric_name(card.task), len(frames.held), candidate_ms, reference_ms)


def _run_held(model: Runs, name: str, held: list[np.ndarray]) -> tuple[list[dict[str, np.ndarray]], float]:
    """Each held input's outputs (the batch axis taken off) and the median ms of a run."""
    try:
        model.settle({name: held[0]})
        outputs, times = [], []
        for array in held:
            began = time.perf_counter()
            result = model.infer({name: array})
            times.append((time.perf_counter() - began) * 1000.0)
            outputs.append({key: np.asarray(value)[0] for key, value in result.items()})
        return outputs, round(statistics.median(times), 2)
    finally:
        model.close()


def _quantizer_version(precision: Precision) -> str:
    if precision != "int8":
        return ""
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}, {SCHEME}"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()
