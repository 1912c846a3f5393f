"""pipeline.config: strict validation with YAML paths in errors, and ${env:...} interpolation."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import (
    STREAM_ID_PATTERN,
    PipelineConfig,
    did_you_mean,
    interpolate_env,
    load_config,
    parse_config,
    stream_id_from,
    stream_id_problem,
)
from pipeline.control import BadStreamRequest, StreamControl, StreamEntry
from pipeline.errors import ConfigError, PipelineError


def minimal(**extra):
    return {"pipeline": "p", "stages": [{"name": "video", "type": "file", "params": {"path": "a.mp4"}}], **extra}


def config_error(data) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value


def test_minimal_config_gets_defaults():
    config = parse_config(minimal(), base_dir=Path("/somewhere"))
    assert isinstance(config, PipelineConfig)
    assert config.pipeline == "p"
    assert config.nats.url == "embedded"
    assert config.nats.prefix == "streamgraph"
    assert config.runtime.threads == 4
    assert config.runtime.drain_timeout_s == 3.0
    stage = config.stages[0]
    assert (stage.name, stage.type, stage.class_, stage.inputs) == ("video", "file", None, [])
    assert stage.params == {"path": "a.mp4"}
    assert (stage.edge.capacity, stage.edge.policy) == (8, "block")
    assert config.base_dir == Path("/somewhere")


def test_class_key_is_read_through_its_alias():
    config = parse_config({"pipeline": "p", "stages": [{"name": "mine", "class": "pkg.mod:Cls"}]})
    assert config.stages[0].class_ == "pkg.mod:Cls"
    assert config.stages[0].type is None


def test_config_error_is_a_pipeline_error_and_a_value_error():
    error = config_error(minimal(runtime={"threads": "ten"}))
    assert isinstance(error, PipelineError)
    assert isinstance(error, ValueError)


def test_unknown_key_names_its_path_and_suggests_the_close_one():
    data = minimal()
    data["stages"][0]["edge"] = {"polcy": "drop_oldest"}
    error = config_error(data)
    assert error.path == "stages[0].edge.polcy"
    assert "stages[0].edge.polcy: unknown key (did you mean 'policy'?)" in str(error)
    assert "allowed: capacity, policy" in str(error)


def test_unknown_top_level_key_lists_allowed_keys_but_not_base_dir():
    error = config_error(minimal(runtme={"threads": 2}))
    assert error.path == "runtme"
    assert "did you mean 'runtime'?" in str(error)
    assert "allowed: api, cluster, nats, pipeline, runtime, sinks, stages" in str(error)
    assert "base_dir" not in str(error)


def test_unknown_key_in_optional_nested_model():
    error = config_error(minimal(nats={"jetstream": {"stream": "S", "stram": "x"}}))
    assert str(error).startswith("nats.jetstream.stram: unknown key (did you mean 'stream'?)")


@pytest.mark.parametrize(("key", "path"), [("", "['']"), ("a b", "runtime['a b']"), ("x.y", "runtime['x.y']")])
def test_a_key_that_is_not_a_plain_name_is_quoted_in_the_path(key, path):
    data = minimal(runtime={key: 1}) if path.startswith("runtime") else {**minimal(), key: 1}
    assert config_error(data).path == path


def test_unknown_key_without_close_match_has_no_hint():
    error = config_error(minimal(runtime={"zzzzzz": 1}))
    assert str(error).startswith("runtime.zzzzzz: unknown key; allowed: drain_timeout_s, stall_s, threads")


def test_wrong_type_says_expected_and_got():
    error = config_error(minimal(runtime={"threads": "ten"}))
    assert str(error) == "runtime.threads: expected int, got 'ten'"
    assert error.path == "runtime.threads"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"runtime": {"threads": True}}, "runtime.threads: expected int, got True"),
        ({"runtime": {"threads": 2.5}}, "runtime.threads: expected int, got 2.5"),
        ({"runtime": {"drain_timeout_s": "1s"}}, "runtime.drain_timeout_s: expected number, got '1s'"),
        ({"nats": {"url": 5}}, "nats.url: expected string, got 5"),
        ({"nats": "embedded"}, "nats: expected mapping, got 'embedded'"),
        ({"stages": "video"}, "stages: expected list, got 'video'"),
    ],
)
def test_strict_types_are_not_coerced(override, expected):
    assert str(config_error(minimal(**override))) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "htp://nowhere",
            "nats.url: expected 'embedded' or nats://host:port (nats, tls, ws, wss), got 'htp://nowhere'",
        ),
        ("nats://", "nats.url: expected 'embedded' or nats://host:port"),
        ("nats://host:port", "nats.url: bad port in 'nats://host:port'"),
    ],
)
def test_a_nats_url_that_cannot_work_is_a_config_error_before_the_run(url, expected):
    assert str(config_error(minimal(nats={"url": url}))).startswith(expected)


def test_nats_urls_of_every_scheme_nats_py_takes_are_accepted():
    for url in ("embedded", "nats://127.0.0.1:4222", "tls://bus.example:4443", "ws://h:8080", "wss://h"):
        assert parse_config(minimal(nats={"url": url}), base_dir=Path(".")).nats.url == url


@pytest.mark.parametrize("listen", ["127.0.0.1:65536", "127.0.0.1:99999", "host", "a b:80"])
def test_an_api_address_that_cannot_be_listened_on_is_a_config_error(listen):
    error = config_error(minimal(api={"listen": listen}))
    assert error.path == "api.listen"
    assert listen in error.message


def test_did_you_mean_names_the_closest_known_name_or_nothing():
    assert did_you_mean("decod", ["decode", "infer"]) == " (did you mean 'decode'?)"
    assert did_you_mean("zzzz", ["decode", "infer"]) == ""


# --- stream ids: one NATS subject token each ----------------------------------------------------------

BAD_STREAM_IDS = ["../x", "a.b", "*", ">", "a b", " a", "a\n", "x" * 1024, "", "a/b", "caf\u00e9", "a\x00"]


@pytest.mark.parametrize("stream_id", BAD_STREAM_IDS)
def test_a_stream_id_that_would_break_a_nats_subject_is_refused_with_the_grammar(stream_id):
    problem = stream_id_problem(stream_id)
    assert problem is not None and "1 to 128 letters, digits, '-' or '_'" in problem
    with pytest.raises(BadStreamRequest) as refused:  # a request's, a YAML entry's: the same model
        StreamControl({}).parse({"id": stream_id, "uri": "x.mp4"})
    assert refused.value.message.startswith("id: expected a stream id: 1 to 128 letters, digits, '-' or '_', got ")


@pytest.mark.parametrize("stream_id", ["a", "cam-1", "Front_Door", "0", "x" * 128])
def test_stream_ids_of_the_grammar_are_taken(stream_id):
    assert stream_id_problem(stream_id) is None
    assert StreamEntry.model_validate({"id": stream_id, "uri": "x.mp4"}).id == stream_id
    assert STREAM_ID_PATTERN.startswith("^") and STREAM_ID_PATTERN.endswith("$")


def test_stream_ids_made_from_names_follow_the_grammar():
    assert stream_id_from("front door.cam", "file") == "front_door_cam"
    assert stream_id_from("", "file") == "file"
    assert stream_id_from("\u00e9" * 300, "file") == "_" * 128
    assert stream_id_problem(stream_id_from("../a.b *>", "x")) is None


def test_value_constraints_are_reported_at_their_path():
    error = config_error(minimal(runtime={"threads": 0}))
    assert error.path == "runtime.threads"
    assert "greater than or equal to 1" in error.message


def test_literal_choices_are_listed():
    data = minimal()
    data["stages"][0]["edge"] = {"policy": "drop"}
    error = config_error(data)
    assert error.path == "stages[0].edge.policy"
    assert "'block'" in error.message and "'drop_oldest'" in error.message
    assert "got 'drop'" in error.message


def test_name_pattern_is_enforced():
    error = config_error(minimal(pipeline="has space"))
    assert error.path == "pipeline"
    assert "got 'has space'" in error.message


def test_missing_keys():
    assert str(config_error({"stages": [{"name": "a", "type": "file"}]})) == "pipeline: required key is missing"
    assert str(config_error({"pipeline": "p"})) == "stages: required key is missing"
    assert str(config_error({"pipeline": "p", "stages": [{"type": "file"}]})) == (
        "stages[0].name: required key is missing"
    )


def test_empty_stage_list_is_an_error():
    error = config_error({"pipeline": "p", "stages": []})
    assert error.path == "stages"
    assert "at least 1" in error.message


def test_top_level_must_be_a_mapping():
    error = config_error(["not", "a", "mapping"])
    assert error.path == ""
    assert str(error) == "expected a mapping at the top level, got list"


def test_source_is_prefixed_to_the_message():
    with pytest.raises(ConfigError) as info:
        parse_config(minimal(runtime={"threads": "x"}), source="my.yaml")
    assert str(info.value).startswith("my.yaml: runtime.threads: expected int")
    assert info.value.source == "my.yaml"


# --- ${env:...} interpolation ------------------------------------------------------------------


def test_interpolate_env_replaces_references_inside_strings():
    env = {"HOST": "example.org", "PORT": "4222"}
    assert interpolate_env("nats://${env:HOST}:${env:PORT}", env) == "nats://example.org:4222"
    assert interpolate_env("x-${env:MISSING:-fallback}-y", env) == "x-fallback-y"


def test_interpolate_env_walks_lists_and_mappings_and_leaves_other_values():
    env = {"A": "1"}
    tree = {"a": ["${env:A}", {"b": "${env:A}x"}], "n": 3, "none": None, "plain": "no refs"}
    assert interpolate_env(tree, env) == {"a": [1, {"b": "1x"}], "n": 3, "none": None, "plain": "no refs"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("8", 8), ("2.5", 2.5), ("true", True), ("hello", "hello"), ("", "")],
)
def test_lone_reference_keeps_its_yaml_type(value, expected):
    result = interpolate_env("${env:V}", {"V": value})
    assert result == expected
    assert type(result) is type(expected)


def test_lone_reference_default_is_typed_too():
    assert interpolate_env("${env:THREADS:-4}", {}) == 4
    assert interpolate_env("${env:EMPTY:-}", {}) == ""


def test_set_variable_wins_over_default():
    assert interpolate_env("${env:RATE:-max}", {"RATE": "native"}) == "native"


def test_lone_reference_to_a_yaml_collection_stays_a_string():
    assert interpolate_env("${env:V}", {"V": "[1, 2]"}) == "[1, 2]"
    assert interpolate_env("${env:V}", {"V": "a: b"}) == "a: b"


def test_int_from_env_validates_as_int(monkeypatch):
    monkeypatch.setenv("SG_UNIT_THREADS", "7")
    config = parse_config(minimal(runtime={"threads": "${env:SG_UNIT_THREADS}"}))
    assert config.runtime.threads == 7


def test_default_from_env_reference_validates_as_int(monkeypatch):
    monkeypatch.delenv("SG_UNIT_THREADS", raising=False)
    config = parse_config(minimal(runtime={"threads": "${env:SG_UNIT_THREADS:-3}"}))
    assert config.runtime.threads == 3


def test_env_value_of_the_wrong_type_is_reported_at_its_path(monkeypatch):
    monkeypatch.setenv("SG_UNIT_THREADS", "ten")
    error = config_error(minimal(runtime={"threads": "${env:SG_UNIT_THREADS}"}))
    assert str(error) == "runtime.threads: expected int, got 'ten'"


def test_unset_variable_without_default_names_the_path(monkeypatch):
    monkeypatch.delenv("SG_UNIT_NOT_SET", raising=False)
    data = minimal()
    data["stages"][0]["params"]["path"] = "${env:SG_UNIT_NOT_SET}"
    error = config_error(data)
    assert error.path == "stages[0].params.path"
    assert "SG_UNIT_NOT_SET" in error.message
    assert "not set" in error.message


def test_lone_reference_whose_value_is_not_yaml_stays_a_string(monkeypatch):
    monkeypatch.setenv("SG_UNIT_VIDEO", "@clip.mp4")
    data = minimal()
    data["stages"][0]["params"]["path"] = "${env:SG_UNIT_VIDEO}"
    config = parse_config(data)
    assert config.stages[0].params["path"] == "@clip.mp4"


# --- load_config --------------------------------------------------------------------------------


def test_load_config_reads_yaml_and_sets_base_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SG_UNIT_RATE", "native")
    file = tmp_path / "pipe.yaml"
    file.write_text(
        "pipeline: demo\n"
        "runtime:\n  threads: ${env:SG_UNIT_THREADS_UNSET:-2}\n"
        "stages:\n"
        "  - name: video\n    type: file\n    params: {path: x.mp4, rate: '${env:SG_UNIT_RATE}'}\n"
    )
    config = load_config(file)
    assert config.pipeline == "demo"
    assert config.runtime.threads == 2
    assert config.stages[0].params == {"path": "x.mp4", "rate": "native"}
    assert config.base_dir == tmp_path.resolve()


def test_load_config_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.source == str(missing)
    assert str(info.value).startswith(f"{missing}: cannot read config")


def test_load_config_invalid_yaml_names_line_and_column(tmp_path):
    file = tmp_path / "bad.yaml"
    file.write_text("pipeline: p\nstages: [\n  - {name: a\n")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert str(info.value).startswith(f"{file}: invalid YAML: line ")
    assert "column" in str(info.value)


def test_load_config_empty_file_is_not_a_mapping(tmp_path):
    file = tmp_path / "empty.yaml"
    file.write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert str(info.value) == f"{file}: expected a mapping at the top level, got nothing"


def test_load_config_validation_error_carries_the_file(tmp_path):
    file = tmp_path / "typo.yaml"
    file.write_text("pipeline: p\nstages:\n  - name: a\n    type: file\n    edge: {polcy: block}\n")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert str(info.value).startswith(f"{file}: stages[0].edge.polcy: unknown key (did you mean 'policy'?)")


def test_load_config_unset_env_error_carries_the_file_and_path(tmp_path, monkeypatch):
    monkeypatch.delenv("SG_UNIT_NOT_SET", raising=False)
    file = tmp_path / "env.yaml"
    file.write_text("pipeline: p\nnats: {url: '${env:SG_UNIT_NOT_SET}'}\nstages: [{name: a, type: file}]\n")
    with pytest.raises(ConfigError) as info:
        load_config(file)
    assert info.value.source == str(file)
    assert info.value.path == "nats.url"
    assert "SG_UNIT_NOT_SET" in str(info.value)


def test_bundled_demo_config_loads():
    config = load_config(Path(__file__).resolve().parents[3] / "configs" / "text-detect.yaml")
    assert [s.name for s in config.stages] == ["video", "decode", "prep", "det", "text", "publish"]
