"""The contract YAML (configs/text-detect-triton.yaml) against a real Triton: the same detections
as the model in this process, and a server killed mid-run costs counted frames, not the process."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.integration.support import ROOT, Recorder, finish, run_to_end, start_cli, until
from tests.remote.servers import free_port

LOCAL = ROOT / "configs" / "text-detect.yaml"
REMOTE = ROOT / "configs" / "text-detect-triton.yaml"


def boxes_by_seq(results: list[dict[str, Any]]) -> dict[int, list[list[float]]]:
    return {r["seq"]: sorted(b["box"] for b in r["results"]["text"]["boxes"]) for r in results}


async def test_the_contract_yaml_on_triton_finds_what_the_model_in_process_finds(
    nats_server: Any, triton_server: Any, sample_video: Path, cli_env: dict[str, str]
) -> None:
    local = await run_to_end(nats_server.url, str(LOCAL), "text-detect", env=cli_env)
    assert local.returncode == 0, local.stderr
    env = {**cli_env, "STREAMGRAPH_TRITON_URL": triton_server.http_url}
    remote = await run_to_end(nats_server.url, str(REMOTE), "text-detect-triton", env=env)
    assert remote.returncode == 0, remote.stderr
    assert "KServe v2 HTTP, binary" in remote.stderr
    assert ", 0 dropped" in remote.stdout
    mine, theirs = boxes_by_seq(local.results["sample"]), boxes_by_seq(remote.results["sample"])
    assert sorted(mine) == sorted(theirs) and len(mine) > 100
    assert sum(len(boxes) for boxes in mine.values()) > len(mine)  # real detections, not empty frames
    for seq, boxes in mine.items():
        assert len(boxes) == len(theirs[seq]), f"frame {seq}: {boxes} vs {theirs[seq]}"
        for a, b in zip(boxes, theirs[seq], strict=True):
            assert max(abs(p - q) for p, q in zip(a, b, strict=True)) <= 1.0, f"frame {seq}: {a} vs {b}"


def engine_errors_in_metrics(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    counted = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("streamgraph_frames_dropped_total{") and 'reason="error:engine:det"' in line
    ]
    return sum(counted)


def readyz(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_a_server_killed_mid_run_costs_counted_frames_and_results_resume_when_it_returns(
    nats_server: Any, triton_server: Any, sample_video: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    config = yaml.safe_load(REMOTE.read_text())
    config["pipeline"] = "triton-outage"
    config["api"] = {"listen": f"127.0.0.1:{free_port()}"}
    config["stages"][0]["params"].update(path=str(sample_video), loop=True, rate="native")
    path = tmp_path / "outage.yaml"
    path.write_text(yaml.safe_dump(config))
    api = "http://" + config["api"]["listen"]
    env = {**cli_env, "STREAMGRAPH_TRITON_URL": triton_server.http_url}

    async with Recorder(nats_server.url, "triton-outage") as recorder:
        results = recorder.recording.results
        process = await start_cli("run", str(path), "--nats-url", nats_server.url, "--no-progress", env=env)
        try:
            await until(lambda: len(results.get("sample", [])) >= 10, "results before the outage")
            assert (await asyncio.to_thread(readyz, api))[0] == 200

            await asyncio.to_thread(triton_server.kill)
            # While it is down no frame gets through, so no result carries the count yet: the
            # metrics and /readyz say it.
            await until(lambda: engine_errors_in_metrics(api) > 0, "frames counted as engine errors in /metrics")
            status, body = await asyncio.to_thread(readyz, api)
            assert status == 503 and "is down" in body["not_ready"]["det"], body
            assert process.returncode is None, "the pipeline died with its server"

            published = len(results["sample"])
            await asyncio.to_thread(triton_server.restart)
            await until(
                lambda: any(r["results"]["text"]["boxes"] for r in results["sample"][published:]),
                "detections after the server came back",
            )
            resumed = next(r for r in results["sample"][published:] if r["results"]["text"]["boxes"])
            assert resumed["drops"]["by_reason"].get("error:engine:det", 0) > 0, resumed["drops"]
            status, body = await asyncio.to_thread(readyz, api)
            assert status == 200, body
        finally:
            if process.returncode is None:
                process.send_signal(2)  # SIGINT, as Ctrl-C sends
            await finish(process, recorder.recording, timeout_s=60)
    assert recorder.recording.returncode == 0, recorder.recording.stderr
    assert "is down" in recorder.recording.stderr and "answers again" in recorder.recording.stderr
