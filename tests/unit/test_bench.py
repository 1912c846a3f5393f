"""The bench scripts still load against the code they measure (nothing else runs them in CI)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script", ["batching.py", "gpu.py", "objects.py", "remote.py", "soak.py"])
def test_the_bench_script_loads_and_describes_its_options(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "--markdown" in done.stdout


def test_a_short_soak_samples_churns_and_judges_the_growth() -> None:
    """12 s of 2 streams, one more added and removed every second: far too short to judge a leak
    (it may say FAIL for the growth), but every part must work: samples, churn, a verdict."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "0.2", "--streams", "2", "--churn-every-s", "1"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
    )
    out = done.stdout
    assert done.returncode in (0, 1), done.stderr
    for column in ("RSS MiB", "open fds", "asyncio tasks", "threads"):
        assert column in out
    churn = re.search(r"(\d+) streams added, (\d+) removed, (\d+) ended as stopped", out)
    assert churn is not None, out
    added, removed, ended = map(int, churn.groups())
    assert added > 0 and added == removed == ended, out
    assert "growth from the middle third" in out
    verdict = re.search(r"^(PASS|FAIL): (.*)$", out, re.MULTILINE)
    assert verdict is not None, out
    if verdict.group(1) == "FAIL":  # a 12 s run may grow; nothing else may go wrong
        assert all(" grew " in problem for problem in verdict.group(2).split("; ")), verdict.group(2)
