"""The YAML loader, fuzzed (hypothesis): whatever a config holds, at any level, loading and
building it either works or raises ``ConfigError`` with the YAML path at fault and a reason;
never another exception (a ``KeyError``, a ``TypeError``...), which would reach the user as a
traceback instead of one line.

Each property starts from a real, valid config (every section, a ``file`` source, a ``streams``
source, a model and its engine) and changes one thing anywhere in it: a value replaced by any
YAML value, an unknown key added, a key removed. Example counts are kept modest and the runs are
derandomized (the same examples every run: CI reproducible).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import load_config, parse_config
from pipeline.errors import ConfigError
from pipeline.service import build

HERE = Path(__file__).resolve().parent
MEDIA = Path(__file__).name
"""A file that exists beside this one: what the sources' ``check`` looks for (build opens no media)."""

BASE: dict[str, Any] = {
    "pipeline": "fuzz",
    "nats": {"url": "nats://127.0.0.1:4222", "prefix": "sg", "jetstream": {"stream": "S"}, "connect_timeout_s": 2},
    "runtime": {"threads": 2, "drain_timeout_s": 1.5},
    "api": {"listen": "127.0.0.1:0", "token": "t"},
    "stages": [
        {"name": "video", "type": "file", "params": {"path": MEDIA, "id": "clip", "rate": "max", "tracks": ["video"]}},
        {
            "name": "cams",
            "type": "streams",
            "params": {
                "streams": [{"id": "a", "uri": MEDIA, "options": {"rate": "native", "loop": True}}],
                "max_streams": 4,
            },
        },
        {"name": "decode", "type": "decode", "inputs": ["video", "cams"], "edge": {"capacity": 4, "policy": "block"}},
        {"name": "prep", "type": "prepare", "inputs": ["decode"], "params": {"model": "pp-ocrv4-det"}},
        {"name": "det", "type": "infer", "inputs": ["prep"], "params": {"model": "pp-ocrv4-det", "engine": "auto"}},
        {"name": "text", "type": "text_detection", "inputs": ["det"]},
        {"name": "publish", "type": "publish", "inputs": ["text"]},
    ],
}

Path_ = tuple[str | int, ...]

YAML_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["", "${env:SG_FUZZ_UNSET}", "${env:HOME}", "embedded", "auto", "x.mp4", "rtsp://", "-1"])
)
YAML_VALUES = st.recursive(
    YAML_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
KEYS = st.text(max_size=10) | st.sampled_from(["params", "type", "class", "inputs", "edge", "id", "uri", "options"])


def paths(value: Any, at: Path_ = ()) -> Iterator[Path_]:
    """Every place in a config tree, the root included."""
    yield at
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from paths(inner, (*at, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from paths(inner, (*at, index))


PLACES = list(paths(BASE))


@st.composite
def changed_configs(draw: st.DrawFn) -> Any:
    """``BASE`` with one thing changed at one place: replaced, a key added, or a key removed."""
    config = copy.deepcopy(BASE)
    place = draw(st.sampled_from(PLACES))
    action = draw(st.sampled_from(["replace", "add", "remove"]))
    if not place:
        return draw(YAML_VALUES) if action == "replace" else {**config, draw(KEYS): draw(YAML_VALUES)}
    parent: Any = config
    for part in place[:-1]:
        parent = parent[part]
    last = place[-1]
    target = parent[last]
    if action == "add" and isinstance(target, dict):
        target[draw(KEYS)] = draw(YAML_VALUES)
    elif action == "remove" and isinstance(parent, dict):
        del parent[last]
    else:
        parent[last] = draw(YAML_VALUES)
    return config


def assert_config_error_or_ok(load: Any, data: Any) -> None:
    try:
        load()
    except ConfigError as exc:
        assert exc.message.strip(), f"a ConfigError without a reason for {data!r}"
        if isinstance(data, dict):
            assert exc.path, f"a ConfigError without a YAML path: {exc}"
        assert "Traceback" not in str(exc)


def test_the_base_config_builds() -> None:
    graph = build(parse_config(BASE, base_dir=HERE))
    assert graph.order == ("video", "cams", "decode", "prep", "det", "text", "publish")


@settings(
    max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(changed_configs())
def test_any_change_anywhere_is_a_config_error_with_a_path_or_builds(data: Any) -> None:
    assert_config_error_or_ok(lambda: build(parse_config(data, base_dir=HERE)), data)


@settings(
    max_examples=100, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(changed_configs())
def test_the_same_through_a_yaml_file(data: Any) -> None:
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "fuzz.yaml"
        file.write_text(yaml.safe_dump(data, allow_unicode=True))
        (Path(folder) / MEDIA).write_bytes(b"")  # relative paths resolve against the YAML's folder

        def load() -> None:
            config = load_config(file)
            build(config, source=str(file))

        assert_config_error_or_ok(load, data)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_text_as_a_yaml_file_is_a_config_error_or_a_config(text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "fuzz.yaml"
        file.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_config(file)
        except ConfigError as exc:
            assert exc.message.strip() and exc.source == str(file)
