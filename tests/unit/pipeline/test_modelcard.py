"""pipeline.modelcard: finding and validating model cards."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.modelcard import (
    PROJECT_MODELS,
    ModelCard,
    find_card,
    list_cards,
    load_card,
    load_model_card,
    search_dirs,
)

SHA = "ab" * 32

CARD = f"""\
name: tiny
license: MIT
task: testing
source:
  path: tiny.onnx
sha256: {SHA}
inputs:
  - {{name: x, dtype: float32, shape: [batch, 3, 8, 8]}}
outputs:
  - {{name: y, dtype: float32, shape: [batch, 1]}}
"""


@pytest.fixture(autouse=True)
def _no_extra_model_dirs(monkeypatch):
    monkeypatch.delenv("STREAMGRAPH_MODELS", raising=False)


def write_card(directory: Path, name: str = "tiny", text: str = CARD, suffix: str = ".yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}{suffix}"
    path.write_text(text)
    return path


def test_find_card_by_name_in_the_project_models():
    assert find_card("pp-ocrv4-det") == PROJECT_MODELS / "pp-ocrv4-det.yaml"


def test_find_card_by_relative_path_uses_base_dir(tmp_path):
    card = write_card(tmp_path / "cards")
    assert find_card("cards/tiny.yaml", base_dir=tmp_path) == card
    assert find_card("tiny.yaml", base_dir=tmp_path / "cards") == card


def test_find_card_by_absolute_path(tmp_path):
    card = write_card(tmp_path)
    assert find_card(str(card)) == card


def test_find_card_missing_path_says_where_it_looked(tmp_path):
    with pytest.raises(ConfigError) as info:
        find_card("cards/missing.yaml", base_dir=tmp_path)
    assert "model card file 'cards/missing.yaml' not found" in info.value.message
    assert str(tmp_path / "cards" / "missing.yaml") in info.value.message


def test_unknown_model_lists_where_it_looked(tmp_path, monkeypatch):
    extra = tmp_path / "extra"
    extra.mkdir()
    monkeypatch.setenv("STREAMGRAPH_MODELS", str(extra))
    with pytest.raises(ConfigError) as info:
        find_card("no-such-model")
    message = info.value.message
    assert "unknown model 'no-such-model'" in message
    assert "no-such-model.yaml" in message
    assert str(extra) in message
    assert str(PROJECT_MODELS) in message


def test_streamgraph_models_dirs_come_first_and_shadow_project_cards(tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    shadow = write_card(first, "pp-ocrv4-det")
    yml = write_card(second, "other", suffix=".yml")
    monkeypatch.setenv("STREAMGRAPH_MODELS", f"{first}:{second}")
    assert search_dirs() == [first, second, PROJECT_MODELS]
    assert find_card("pp-ocrv4-det") == shadow
    assert find_card("other") == yml


def test_load_card_of_the_project_model():
    card = load_card("pp-ocrv4-det")
    assert isinstance(card, ModelCard)
    assert card.name == "pp-ocrv4-det"
    assert card.card_path == (PROJECT_MODELS / "pp-ocrv4-det.yaml").resolve()
    assert card.source.wheel is not None and card.source.path is None
    assert card.file_name == "ch_PP-OCRv4_det_infer.onnx"
    assert [i.name for i in card.inputs] == ["x"]
    assert card.inputs[0].shape == ["batch", 3, "height", "width"]
    assert card.preprocess is not None
    assert card.preprocess.size == [352, 640]
    assert card.preprocess.multiple_of == 32


def test_load_card_with_a_local_path(tmp_path):
    card = load_card(str(write_card(tmp_path)))
    assert card.source.path == "tiny.onnx"
    assert card.file_name == "tiny.onnx"
    assert card.sha256 == SHA
    assert card.preprocess is None
    assert card.card_path == (tmp_path / "tiny.yaml").resolve()


@pytest.mark.parametrize(
    ("old", "new", "path", "fragment"),
    [
        ("dtype: float32, shape: [batch, 3", "dtype: float64, shape: [batch, 3", "inputs[0].dtype", "float64"),
        ("task: testing\n", "task: testing\ncolour: red\n", "colour", "unknown key"),
        ("license: MIT\n", "", "license", "required key is missing"),
        (
            "  path: tiny.onnx\n",
            "  path: tiny.onnx\n  wheel: {package: p, version: '1', member: m}\n",
            "source",
            "exactly one of 'path', 'wheel' or 'darknet'",
        ),
    ],
)
def test_load_card_validation_errors_name_the_card_and_the_key(tmp_path, old, new, path, fragment):
    file = write_card(tmp_path, text=CARD.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_card(str(file))
    assert info.value.source == str(file)
    assert info.value.path == path
    assert fragment in info.value.message


def test_card_source_needs_exactly_one_of_path_and_wheel(tmp_path):
    file = write_card(tmp_path, text=CARD.replace("source:\n  path: tiny.onnx\n", "source: {}\n"))
    with pytest.raises(ConfigError) as info:
        load_card(str(file))
    assert "exactly one of 'path', 'wheel' or 'darknet'" in info.value.message


def test_load_card_rejects_non_mappings_and_bad_yaml(tmp_path):
    listing = write_card(tmp_path, "list", "- a\n- b\n")
    with pytest.raises(ConfigError, match="a model card is a mapping"):
        load_card(str(listing))
    broken = write_card(tmp_path, "broken", "name: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read model card"):
        load_card(str(broken))


def test_bad_sha256_error_describes_a_sha256(tmp_path):
    file = write_card(tmp_path, text=CARD.replace(SHA, "ABC123"))
    with pytest.raises(ConfigError) as info:
        load_card(str(file))
    assert info.value.path == "sha256"
    assert "a name of letters" not in info.value.message


def test_list_cards_includes_project_cards_once_with_extra_dirs_first(tmp_path, monkeypatch):
    extra = tmp_path / "extra"
    shadow = write_card(extra, "silero-vad")
    write_card(extra, "tiny")
    monkeypatch.setenv("STREAMGRAPH_MODELS", str(extra))
    cards = list_cards()
    stems = [p.stem for p in cards]
    assert sorted(stems) == sorted(set(stems))
    assert {"pp-ocrv4-det", "silero-vad", "tiny"} <= set(stems)
    assert shadow in cards
    assert PROJECT_MODELS / "silero-vad.yaml" not in cards


def test_load_model_card_reports_at_params_model(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_model_card("sg-unit-missing", tmp_path)
    assert info.value.path == "params.model"
    assert "unknown model 'sg-unit-missing'" in info.value.message

    broken = write_card(tmp_path, text=CARD.replace("license: MIT\n", ""))
    with pytest.raises(ConfigError) as info:
        load_model_card("tiny.yaml", tmp_path)
    assert info.value.path == "params.model"
    assert str(broken) in info.value.message
    assert "license" in info.value.message


def test_load_model_card_resolves_relative_to_base_dir(tmp_path):
    write_card(tmp_path / "models")
    assert load_model_card("models/tiny.yaml", tmp_path).name == "tiny"
