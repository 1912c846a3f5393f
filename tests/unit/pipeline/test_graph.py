"""pipeline.graph: from a validated config to a checked DAG of stage instances."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

import stages  # noqa: F401  (registers the built-in stage types)
from pipeline.config import parse_config
from pipeline.errors import ConfigError
from pipeline.graph import Graph, build_graph
from pipeline.stage import Source, Stage, StageParams
from stages.decode.decode import Decode
from stages.ingest.file import FileSource
from stages.text.text_detection import TextDetection


class CustomParams(StageParams):
    factor: int = Field(default=1, ge=1)


class CustomStage(Stage):
    """A user's own stage, referenced from YAML as ``class: <this module>:CustomStage``."""

    Params = CustomParams


class CustomSource(Source):
    pass


class CheckedStage(Stage):
    """A stage whose ``check`` rejects its params with a stage-relative path."""

    Params = CustomParams

    def check(self, base_dir: Path) -> None:
        if self.params.factor == 13:
            raise ConfigError("params.factor", "13 is unlucky")


def video(name: str = "video") -> dict:
    return {"name": name, "type": "file", "params": {"path": __file__}}  # any file that exists: building opens no media


def stage(name: str, inputs: list[str], type_: str = "decode", **extra) -> dict:
    return {"name": name, "type": type_, "inputs": inputs, **extra}


def build(stage_list: list[dict], **kwargs) -> Graph:
    return build_graph(parse_config({"pipeline": "p", "stages": stage_list}), **kwargs)


def graph_error(stage_list: list[dict], **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build(stage_list, **kwargs)
    return info.value


def test_builds_nodes_with_instances_params_and_edges():
    graph = build(
        [
            video(),
            stage("decode", ["video"], params={"threads": 2}, edge={"capacity": 3, "policy": "drop_oldest"}),
            stage("text", ["decode"], "text_detection", params={"thresh": 0.4}),
        ]
    )
    assert graph.pipeline == "p"
    assert graph.order == ("video", "decode", "text")
    assert isinstance(graph.nodes["video"].stage, FileSource)
    assert isinstance(graph.nodes["decode"].stage, Decode)
    assert isinstance(graph.nodes["text"].stage, TextDetection)
    decode = graph.nodes["decode"]
    assert decode.name == "decode"
    assert decode.stage.name == "decode"
    assert decode.stage.params.threads == 2
    assert decode.inputs == ("video",)
    assert (decode.edge.capacity, decode.edge.policy) == (3, "drop_oldest")
    assert graph.nodes["video"].is_source
    assert not decode.is_source
    assert [n.name for n in graph.sources] == ["video"]
    assert graph.consumers("video") == ["decode"]
    assert graph.consumers("text") == []


def test_topological_order_puts_every_stage_after_its_inputs():
    graph = build(
        [
            stage("sink", ["left", "right"], "text_detection"),
            stage("right", ["split"]),
            stage("left", ["split"]),
            stage("split", ["video"]),
            video(),
        ]
    )
    order = graph.order
    assert set(order) == {"video", "split", "left", "right", "sink"}
    for name, node in graph.nodes.items():
        for dep in node.inputs:
            assert order.index(dep) < order.index(name)
    # Stages ready together keep their YAML order.
    assert order == ("video", "split", "right", "left", "sink")
    assert graph.consumers("split") == ["right", "left"]


def test_two_sources_are_both_sources():
    graph = build([video("a"), video("b"), stage("d", ["a", "b"])])
    assert [n.name for n in graph.sources] == ["a", "b"]
    assert graph.nodes["d"].inputs == ("a", "b")


def test_unknown_stage_type():
    error = graph_error([video(), stage("d", ["video"], "decoder")])
    assert error.path == "stages[1].type"
    assert "unknown stage type 'decoder'" in error.message
    assert "decode" in error.message


def test_unknown_params_key_names_its_path():
    error = graph_error([video(), stage("d", ["video"], params={"thread": 2})])
    assert error.path == "stages[1].params.thread"
    assert str(error).startswith("stages[1].params.thread: unknown key (did you mean 'threads'?)")


def test_wrong_param_type():
    error = graph_error([video(), stage("d", ["video"], params={"threads": "two"})])
    assert str(error) == "stages[1].params.threads: expected int, got 'two'"


def test_missing_required_param():
    error = graph_error([{"name": "video", "type": "file"}])
    assert str(error) == "stages[0].params.path: required key is missing"


def test_param_constraint():
    error = graph_error([video(), stage("t", ["video"], "text_detection", params={"thresh": 1.5})])
    assert error.path == "stages[1].params.thresh"


def test_unknown_input_names_stage_and_input_index():
    error = graph_error([video(), stage("d", ["video", "vidoe"])])
    assert error.path == "stages[1].inputs[1]"
    assert "unknown stage 'vidoe'" in error.message
    assert "video" in error.message


def test_stage_reading_its_own_output():
    error = graph_error([video(), stage("d", ["video", "d"])])
    assert error.path == "stages[1].inputs[1]"
    assert "its own output" in error.message


def test_cycle_is_rejected():
    error = graph_error([video(), stage("a", ["video", "b"]), stage("b", ["a"])])
    assert error.path == "stages[1].inputs"
    assert "cycle" in error.message
    assert "a, b" in error.message


def test_duplicate_stage_name():
    error = graph_error([video(), stage("d", ["video"]), stage("d", ["video"])])
    assert error.path == "stages[2].name"
    assert "duplicate stage name 'd'" in error.message


def test_source_with_inputs():
    error = graph_error([video("a"), {**video("b"), "inputs": ["a"]}])
    assert error.path == "stages[1].inputs"
    assert "source stage 'b' takes no inputs" in error.message


def test_non_source_without_inputs():
    error = graph_error([video(), stage("d", [])])
    assert error.path == "stages[1].inputs"
    assert "needs at least one input" in error.message


def test_duplicate_input_is_rejected():
    error = graph_error([video(), stage("d", ["video", "video"])])
    assert error.path == "stages[1].inputs[1]"


def test_stage_check_errors_are_prefixed_with_the_stage_path():
    error = graph_error(
        [video(), {"name": "c", "class": f"{__name__}:CheckedStage", "inputs": ["video"], "params": {"factor": 13}}]
    )
    assert str(error) == "stages[1].params.factor: 13 is unlucky"


def test_builtin_check_reports_an_unknown_model_card():
    error = graph_error([video(), stage("prep", ["video"], "prepare", params={"model": "sg-unit-no-such-model"})])
    assert error.path == "stages[1].params.model"
    assert "unknown model 'sg-unit-no-such-model'" in error.message


def test_source_name_prefixes_graph_errors():
    error = graph_error([video(), stage("d", ["nothing"])], source="pipe.yaml")
    assert error.source == "pipe.yaml"
    assert str(error).startswith("pipe.yaml: stages[1].inputs[0]:")
    error = graph_error([video(), stage("d", ["video"], "nope")], source="pipe.yaml")
    assert str(error).startswith("pipe.yaml: stages[1].type:")


def test_class_escape_hatch_loads_a_users_stage_with_its_params():
    graph = build(
        [
            {"name": "src", "class": f"{__name__}:CustomSource"},
            {"name": "mine", "class": f"{__name__}:CustomStage", "inputs": ["src"], "params": {"factor": 3}},
        ]
    )
    assert type(graph.nodes["src"].stage) is CustomSource
    assert graph.nodes["src"].is_source
    mine = graph.nodes["mine"].stage
    assert type(mine) is CustomStage
    assert mine.params.factor == 3


def test_class_escape_hatch_validates_the_users_params():
    error = graph_error(
        [video(), {"name": "mine", "class": f"{__name__}:CustomStage", "inputs": ["video"], "params": {"factr": 2}}]
    )
    assert str(error).startswith("stages[1].params.factr: unknown key (did you mean 'factor'?)")


@pytest.mark.parametrize(
    "class_path",
    ["sg_unit_missing_module:Stage", f"{__name__}:NoSuchClass", f"{__name__}:CustomParams", "no-colon"],
)
def test_class_escape_hatch_bad_path(class_path):
    error = graph_error([video(), {"name": "mine", "class": class_path, "inputs": ["video"]}])
    assert error.path == "stages[1].class"


def test_type_and_class_together():
    error = graph_error(
        [video(), {"name": "d", "type": "decode", "class": f"{__name__}:CustomStage", "inputs": ["video"]}]
    )
    assert error.path == "stages[1]"
    assert "exactly one of 'type' or 'class'" in error.message


def test_the_graph_knows_the_latency_keys_its_stages_report():
    """Each stage declares what it reports; a result carries exactly those, not a fixed list."""
    from pipeline.config import load_config

    root = Path(__file__).resolve().parents[3]
    graph = build_graph(load_config(root / "configs" / "text-detect.yaml"))
    assert graph.latency_keys == ("decode", "prepare", "batch_wait", "infer", "post")
    vad = build_graph(load_config(root / "configs" / "vad.yaml"))  # audio: infer prepares nothing, but says so
    assert vad.latency_keys == ("decode", "prepare", "batch_wait", "infer", "post", "held")
