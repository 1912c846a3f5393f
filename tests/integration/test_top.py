"""``streamgraph top`` against a real nats-server while a pipeline runs: a row per stream with
its state, results, rate, latency and what it found last."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from samples.photos import object_samples

from .support import ROOT, running_pipeline, until
from .test_python_api import objects_config


async def test_top_shows_a_running_stream(nats_server: Any, cli_env: dict[str, str]) -> None:
    config = objects_config(object_samples()["person"])
    config["pipeline"] = "topped"
    config["stages"][0]["params"].update(loop=True, rate="native")
    async with running_pipeline(nats_server.url, config) as running:
        await until(lambda: running.runner.stats.published >= 3, "the first results")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pipeline.cli", "top", "streamgraph.topped.>", "--nats-url", nats_server.url,
            "--for", "2", cwd=str(ROOT), env=cli_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    row = next(line for line in lines if "│ topped" in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]
    pipeline, stream, state, results, fps, p50, p99, dropped, found = cells
    assert (pipeline, stream, state) == ("topped", "person", "running")
    assert int(results) > 0 and float(fps) > 0 and float(p50) <= float(p99) and dropped == "0"
    assert found.startswith("objects: ") and "person" in found
