"""``class: module:Class`` finds a module beside the config file, without PYTHONPATH, and leaves
``sys.path`` as it was; a module or class that is not there is a config error that says where it
looked."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import stages  # noqa: F401  (registers the built-in stage types)
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.graph import build_graph
from pipeline.stage import Stage, stage_class_for

STAGE_MODULE = """
from collections.abc import Sequence

from pipeline.media import Item
from pipeline.stage import Stage, StageParams


class MarkParams(StageParams):
    label: str = "seen"


class Mark(Stage):
    Params = MarkParams

    async def process(self, item: Item) -> Sequence[Item]:
        item.results[self.name] = {"type": "mark", "label": self.params.label}
        return (item,)


class Other(Stage):
    pass
"""


def unique(name: str) -> str:
    """A module name no other test has imported (``sys.modules`` outlives a test)."""
    return f"sg_{name}_{uuid.uuid4().hex[:8]}"


def write_module(folder: Path, name: str, text: str = STAGE_MODULE) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_module_beside_the_config_is_found_and_sys_path_is_left_alone(tmp_path: Path) -> None:
    name = unique("mystages")
    write_module(tmp_path, name)
    before = list(sys.path)
    cls = stage_class_for(None, f"{name}:Mark", "stages[1]", base_dir=tmp_path)
    assert sys.path == before
    assert issubclass(cls, Stage) and cls.__name__ == "Mark"
    assert Path(sys.modules[name].__file__ or "") == tmp_path / f"{name}.py"


def test_without_the_config_dir_the_module_is_not_found(tmp_path: Path) -> None:
    name = unique("elsewhere")
    write_module(tmp_path, name)
    with pytest.raises(ConfigError) as info:
        stage_class_for(None, f"{name}:Mark", "stages[1]")
    assert info.value.path == "stages[1].class"
    assert info.value.message == f"no module {name!r} on the Python path"


def test_a_missing_module_names_the_folder_it_looked_in(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        stage_class_for(None, "sg_no_such_module:Mark", "stages[2]", base_dir=tmp_path)
    assert str(info.value) == f"stages[2].class: no module 'sg_no_such_module' in {tmp_path} or on the Python path"


def test_a_missing_class_lists_the_stages_the_module_has(tmp_path: Path) -> None:
    name = unique("mystages")
    path = write_module(tmp_path, name)
    with pytest.raises(ConfigError) as info:
        stage_class_for(None, f"{name}:Marc", "stages[1]", base_dir=tmp_path)
    assert info.value.message == f"module {name!r} ({path}) has no 'Marc'; Stage classes there: Mark, Other"


def test_a_module_whose_own_import_fails_says_which_import(tmp_path: Path) -> None:
    name = unique("needs")
    write_module(tmp_path, name, "import sg_not_installed_dependency\n")
    with pytest.raises(ConfigError) as info:
        stage_class_for(None, f"{name}:Mark", "stages[1]", base_dir=tmp_path)
    assert info.value.message == f"cannot import {name!r}: No module named 'sg_not_installed_dependency'"


def test_a_module_that_raises_on_import_names_the_file_and_line(tmp_path: Path) -> None:
    name = unique("broken")
    path = write_module(tmp_path, name, "x = 1\nraise RuntimeError('no camera configured')\n")
    with pytest.raises(ConfigError) as info:
        stage_class_for(None, f"{name}:Mark", "stages[1]", base_dir=tmp_path)
    assert info.value.message == f"importing {name!r} raised RuntimeError: no camera configured ({path}:2)"
    assert str(tmp_path) not in sys.path


def test_a_package_beside_the_config_and_its_neighbour_modules(tmp_path: Path) -> None:
    """``mypkg.stages:Mark`` where ``mypkg/stages.py`` imports a sibling module of the config dir
    while it is imported, and a submodule of its package later (``__path__`` finds it)."""
    package, helper = unique("pkg"), unique("helper")
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    write_module(tmp_path, helper, "LABEL = 'from the helper'\n")
    write_module(tmp_path / package, "lazy", "VALUE = 42\n")
    write_module(
        tmp_path / package,
        "stages",
        f"from {helper} import LABEL\n{textwrap.dedent(STAGE_MODULE)}\n"
        f"def later():\n    from {package}.lazy import VALUE\n    return VALUE\n",
    )
    cls = stage_class_for(None, f"{package}.stages:Mark", "stages[1]", base_dir=tmp_path)
    module = sys.modules[f"{package}.stages"]
    assert module.LABEL == "from the helper"
    assert str(tmp_path) not in sys.path
    assert module.later() == 42
    assert cls.__name__ == "Mark"


def test_a_config_file_names_a_stage_beside_it(tmp_path: Path, sample_video: Path) -> None:
    """The whole path a user takes: ``load_config`` of a YAML file, then the graph."""
    name = unique("mystages")
    write_module(tmp_path, name)
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"""
pipeline: mine
stages:
  - {{name: video, type: file, params: {{path: '{sample_video}'}}}}
  - {{name: decode, type: decode, inputs: [video]}}
  - {{name: mark, class: '{name}:Mark', inputs: [decode], params: {{label: hello}}}}
"""
    )
    graph = build_graph(load_config(config), source=str(config))
    mark = graph.nodes["mark"].stage
    assert type(mark).__module__ == name
    assert mark.params.label == "hello"
