"""pipeline.stage: the Stage base class, StageContext, and the stage registry."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import stages  # noqa: F401  (registers the built-in stage types)
from pipeline.errors import ConfigError
from pipeline.media import EndOfStream, Item, StreamInfo
from pipeline.stage import NoParams, Source, Stage, register_stage, registered_types, stage_class_for


class UnitStage(Stage):
    pass


class NotAStage:
    pass


def test_builtin_stage_types_are_registered():
    types = registered_types()
    for name in ("file", "decode", "prepare", "infer", "text_detection", "publish"):
        assert name in types
        assert issubclass(types[name], Stage)
    assert issubclass(types["file"], Source)


def test_registered_types_is_a_copy():
    registered_types()["unit-not-really"] = UnitStage
    assert "unit-not-really" not in registered_types()


def test_register_stage_adds_a_type_and_is_idempotent_for_the_same_class():
    register_stage("unit-stage-type")(UnitStage)
    register_stage("unit-stage-type")(UnitStage)
    assert registered_types()["unit-stage-type"] is UnitStage
    assert stage_class_for("unit-stage-type", None, "stages[0]") is UnitStage


def test_register_stage_rejects_a_second_class_for_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):

        @register_stage("decode")
        class Impostor(Stage):
            pass


def test_stage_class_for_unknown_type_lists_known_ones():
    with pytest.raises(ConfigError) as info:
        stage_class_for("decoder", None, "stages[3]")
    assert info.value.path == "stages[3].type"
    assert "unknown stage type 'decoder'" in info.value.message
    assert "decode" in info.value.message and "file" in info.value.message


@pytest.mark.parametrize(("type_name", "class_path"), [(None, None), ("decode", "x.y:Z")])
def test_stage_class_for_needs_exactly_one_of_type_and_class(type_name, class_path):
    with pytest.raises(ConfigError) as info:
        stage_class_for(type_name, class_path, "stages[0]")
    assert info.value.path == "stages[0]"
    assert "exactly one of 'type' or 'class'" in info.value.message


def test_stage_class_for_imports_a_class_path():
    assert stage_class_for(None, f"{__name__}:UnitStage", "stages[0]") is UnitStage


@pytest.mark.parametrize(
    ("class_path", "fragment"),
    [
        ("no_colon_here", "expected 'package.module:Class'"),
        (":Cls", "expected 'package.module:Class'"),
        ("json:", "expected 'package.module:Class'"),
        ("sg_unit_no_such_module:Cls", "no module 'sg_unit_no_such_module' on the Python path"),
        (f"{__name__}:Missing", "has no 'Missing'; Stage classes there: UnitStage"),
        (f"{__name__}:NotAStage", "is not a streamgraph Stage subclass"),
        ("json:dumps", "is not a streamgraph Stage subclass"),
    ],
)
def test_stage_class_for_bad_class_paths(class_path, fragment):
    with pytest.raises(ConfigError) as info:
        stage_class_for(None, class_path, "stages[1]")
    assert info.value.path == "stages[1].class"
    assert fragment in info.value.message


def test_stage_class_for_relative_module_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        stage_class_for(None, ".mystage:Cls", "stages[0]")
    assert info.value.path == "stages[0].class"


def test_ctx_before_start_is_an_error():
    stage = UnitStage("early", NoParams())
    with pytest.raises(RuntimeError, match="'early' used before start"):
        _ = stage.ctx


async def test_default_hooks(make_ctx):
    stage = UnitStage("s", NoParams())
    ctx = make_ctx("s")
    await stage.start(ctx)
    assert stage.ctx is ctx
    item = Item(stream_id="a", media=None, capture_time=0.0)  # type: ignore[arg-type]
    assert list(await stage.process(item)) == [item]
    await stage.on_stream_added(StreamInfo("a", "x://", live=False))
    assert list(await stage.on_stream_ended(EndOfStream("a"))) == []


def test_source_request_stop_sets_stopping():
    source = Source("src", NoParams())
    assert not source.stopping.is_set()
    source.request_stop()
    assert source.stopping.is_set()


async def test_source_run_must_be_overridden():
    with pytest.raises(NotImplementedError):
        await Source("src", NoParams()).run(None)  # type: ignore[arg-type]


async def test_run_blocking_runs_in_the_pool_with_args_and_kwargs(make_ctx):
    ctx = make_ctx()

    def work(a, b, *, c=0):
        return a + b + c, threading.current_thread().name

    total, thread = await ctx.run_blocking(work, 1, 2, c=3)
    assert total == 6
    assert thread.startswith("unit")
    assert (await ctx.run_blocking(work, 1, 2))[0] == 3


def test_resolve_path(make_ctx, tmp_path, monkeypatch):
    ctx = make_ctx()
    assert ctx.resolve_path("clip.mp4") == tmp_path / "clip.mp4"
    assert ctx.resolve_path("/abs/clip.mp4") == Path("/abs/clip.mp4")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ctx.resolve_path("~/clip.mp4") == tmp_path / "home" / "clip.mp4"
