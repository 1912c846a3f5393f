"""The bench scripts still load against the code they measure (nothing else runs them in CI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script", ["batching.py", "gpu.py", "remote.py"])
def test_the_bench_script_loads_and_describes_its_options(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "--markdown" in done.stdout
