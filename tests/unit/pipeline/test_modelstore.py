"""pipeline.modelstore: the cache location, hashing, and verified local model files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipeline.errors import ModelError
from pipeline.modelcard import load_card
from pipeline.modelstore import cache_dir, cached_path, model_path, pull_model, sha256_of

PAYLOAD = b"not really onnx, but bytes with a known hash\n" * 100


def write_local_card(directory: Path, sha256: str, *, model: str = "tiny.onnx", name: str = "tiny") -> Path:
    card = directory / f"{name}.yaml"
    card.write_text(
        f"name: {name}\nlicense: MIT\ntask: testing\nsource: {{path: {model}}}\nsha256: {sha256}\n"
        "inputs: [{name: x, dtype: float32, shape: [1]}]\noutputs: [{name: y, dtype: float32, shape: [1]}]\n"
    )
    return card


def test_cache_dir_respects_streamgraph_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMGRAPH_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"


def test_cache_dir_expands_the_home_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("STREAMGRAPH_CACHE", "~/models-cache")
    assert cache_dir() == tmp_path / "models-cache"


def test_cache_dir_default_is_under_the_home_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("STREAMGRAPH_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "streamgraph"


def test_sha256_of_matches_hashlib_across_read_blocks(tmp_path):
    file = tmp_path / "big.bin"
    data = bytes(range(256)) * 5000  # > 1 MiB: more than one read block
    file.write_bytes(data)
    assert sha256_of(file) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert sha256_of(empty) == hashlib.sha256(b"").hexdigest()


def test_cached_path_is_keyed_by_the_expected_hash(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMGRAPH_CACHE", str(tmp_path))
    card = load_card("pp-ocrv4-det")
    assert cached_path(card) == tmp_path / "models" / card.sha256[:16] / "ch_PP-OCRv4_det_infer.onnx"


def test_local_model_with_the_right_hash_is_returned(tmp_path):
    (tmp_path / "tiny.onnx").write_bytes(PAYLOAD)
    card = load_card(str(write_local_card(tmp_path, hashlib.sha256(PAYLOAD).hexdigest())))
    assert model_path(card) == tmp_path.resolve() / "tiny.onnx"
    assert pull_model(card) == tmp_path.resolve() / "tiny.onnx"  # a local card needs no pull


def test_local_model_with_a_wrong_hash_names_the_card(tmp_path):
    (tmp_path / "tiny.onnx").write_bytes(PAYLOAD)
    card = load_card(str(write_local_card(tmp_path, "f" * 64, name="my-model")))
    with pytest.raises(ModelError) as info:
        model_path(card)
    message = str(info.value)
    assert "model 'my-model'" in message
    assert "sha256 mismatch for tiny.onnx" in message
    assert "f" * 64 in message
    assert hashlib.sha256(PAYLOAD).hexdigest() in message


def test_local_model_file_missing(tmp_path):
    card = load_card(str(write_local_card(tmp_path, "f" * 64, model="gone.onnx")))
    with pytest.raises(ModelError, match=r"model 'tiny' .*gone\.onnx not found"):
        model_path(card)


def test_local_model_absolute_path(tmp_path):
    model = tmp_path / "elsewhere" / "abs.onnx"
    model.parent.mkdir()
    model.write_bytes(PAYLOAD)
    cards = tmp_path / "cards"
    cards.mkdir()
    card = load_card(str(write_local_card(cards, hashlib.sha256(PAYLOAD).hexdigest(), model=str(model))))
    assert model_path(card) == model


def test_wheel_model_not_pulled_is_an_error_without_pull(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMGRAPH_CACHE", str(tmp_path))
    card = load_card("pp-ocrv4-det")
    with pytest.raises(ModelError, match="'pp-ocrv4-det' is not pulled yet"):
        model_path(card, pull=False)


def test_wheel_model_in_the_cache_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMGRAPH_CACHE", str(tmp_path))
    card = load_card("pp-ocrv4-det")
    target = cached_path(card)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"placeholder")
    assert model_path(card, pull=False) == target
    assert pull_model(card) == target  # already there: nothing is fetched
