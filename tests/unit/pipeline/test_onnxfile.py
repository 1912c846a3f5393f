"""pipeline.onnxfile: an ONNX file's metadata_props, read without a runtime."""

from __future__ import annotations

from pathlib import Path

import onnxruntime
import pytest

from pipeline.capabilities import PROBE_MODEL
from pipeline.modelcard import load_card
from pipeline.modelstore import model_path
from pipeline.onnxfile import metadata_props


def test_the_recognizers_dictionary_reads_as_onnxruntime_reads_it():
    path = model_path(load_card("pp-ocrv4-rec"))
    expected = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    props = metadata_props(path)
    assert props == expected.custom_metadata_map
    assert len(props["character"].split("\n")) > 6000  # PP-OCRv4's Chinese + Latin dictionary


def test_a_model_without_metadata_has_none(tmp_path: Path):
    (tmp_path / "probe.onnx").write_bytes(PROBE_MODEL)
    assert metadata_props(tmp_path / "probe.onnx") == {}


@pytest.mark.parametrize("data", [b"\x08", b"\x72\x10abc", b"\x0f\x00"])
def test_a_file_that_is_not_a_protobuf_is_a_value_error(tmp_path: Path, data: bytes):
    (tmp_path / "bad.onnx").write_bytes(data)
    with pytest.raises(ValueError):
        metadata_props(tmp_path / "bad.onnx")
