"""``streamgraph run``'s exit code, as a supervisor sees it: 0 for a clean stop (also after a stream
added at run time failed), 1 when the pipeline itself failed; config errors (2) are
tests/integration/test_cli.py's, a failed stream of the config file (1) test_text_detect.py's."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp

from pipeline.bus import free_port

from .support import GUARD_S, Recorder, finish, start_cli, wait_listening


def garbage_file(folder: Path) -> Path:
    """A file that exists (so it is accepted) and that no demuxer can read (so its stream fails)."""
    path = folder / "garbage.mp4"
    path.write_bytes(bytes(range(256)) * 40)
    return path


def service_config(folder: Path, port: int, *, streams: str = "[]", stay_open: bool = True) -> Path:
    config = folder / "service.yaml"
    config.write_text(
        f"""
pipeline: exit-codes
api: {{listen: '127.0.0.1:{port}'}}
stages:
  - {{name: cams, type: streams, params: {{stay_open: {str(stay_open).lower()}, streams: {streams}}}}}
  - {{name: decode, type: decode, inputs: [cams]}}
  - {{name: publish, type: publish, inputs: [decode]}}
"""
    )
    return config


async def add_stream_over_http(port: int, body: dict[str, Any]) -> None:
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        await wait_listening(http, base)
        async with http.post(f"{base}/streams", json=body) as response:
            assert response.status == 201, await response.text()


async def test_ctrl_c_after_a_stream_added_at_run_time_failed_exits_0(
    nats_server: Any, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """The reported case: a supervisor saw exit 1 (a crash) for a service stopped on purpose."""
    port = free_port()
    config = service_config(tmp_path, port)
    async with Recorder(nats_server.url, "exit-codes") as recorder:
        process = await start_cli("run", str(config), "--nats-url", nats_server.url, "--no-progress", env=cli_env)
        await add_stream_over_http(port, {"id": "bad", "uri": str(garbage_file(tmp_path))})
        await asyncio.wait_for(recorder.ended("bad").wait(), GUARD_S)
        assert process.returncode is None, "one bad stream must not end the service"
        process.send_signal(signal.SIGINT)
        await finish(process, recorder.recording)
    recording = recorder.recording
    assert recording.event_names("bad") == ["error", "ended"]  # it did fail (never opened: never started)
    assert recording.returncode == 0, recording.stderr
    assert recording.stdout.startswith("exit-codes stopped: 1 stream(s)")
    assert "stream bad" in recording.stderr and "failed: " in recording.stderr  # still said, on stderr
    assert "Traceback" not in recording.stderr


async def test_a_run_that_ends_by_itself_after_a_run_time_stream_failed_exits_0(
    nats_server: Any, tmp_path: Path, sample_video: Path, cli_env: dict[str, str]
) -> None:
    """``stay_open: false``: the service ends with its last stream; the config's stream went well."""
    port = free_port()
    sample = f"[{{id: sample, uri: '{sample_video}', options: {{rate: native}}}}]"  # 10 s: time to add one
    config = service_config(tmp_path, port, streams=sample, stay_open=False)
    async with Recorder(nats_server.url, "exit-codes") as recorder:
        process = await start_cli("run", str(config), "--nats-url", nats_server.url, "--no-progress", env=cli_env)
        await add_stream_over_http(port, {"id": "bad", "uri": str(garbage_file(tmp_path))})
        await finish(process, recorder.recording)
        await asyncio.wait_for(recorder.ended("sample").wait(), GUARD_S)
    recording = recorder.recording
    assert recording.events["sample"][-1]["reason"] == "eof", "the run must end by itself, not be stopped"
    assert recording.event_names("bad") == ["error", "ended"]
    assert "stream bad (added at run time) failed: " in recording.stderr
    assert recording.returncode == 0, recording.stderr


CRASHING_STAGE = """
from pipeline.stage import Stage, StageContext


class NeedsAGpu(Stage):
    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        raise RuntimeError("no CUDA device visible")
"""


async def test_a_stage_that_crashes_fails_the_pipeline_with_exit_1(
    nats_server: Any, tmp_path: Path, sample_video: Path, cli_env: dict[str, str]
) -> None:
    """Not a config error (2) and not a clean stop (0): the pipeline itself failed. The stage's
    module sits beside the config, found without PYTHONPATH."""
    (tmp_path / "crashing_stage.py").write_text(CRASHING_STAGE)
    config = tmp_path / "crash.yaml"
    config.write_text(
        f"""
pipeline: crash
stages:
  - {{name: video, type: file, params: {{path: '{sample_video}'}}}}
  - {{name: gpu, class: 'crashing_stage:NeedsAGpu', inputs: [video]}}
  - {{name: publish, type: publish, inputs: [gpu]}}
"""
    )
    env = {k: v for k, v in cli_env.items() if k != "PYTHONPATH"}
    process = await start_cli("run", str(config), "--nats-url", nats_server.url, "--no-progress", env=env)
    stdout, stderr = await asyncio.wait_for(process.communicate(), GUARD_S)
    err = stderr.decode()
    assert process.returncode == 1, err
    assert err.splitlines()[-1] == "error: pipeline crash failed: RuntimeError: no CUDA device visible"
    assert "ERROR streamgraph.cli: pipeline crash failed\nTraceback" in err  # the traceback is logged
    assert f'File "{tmp_path / "crashing_stage.py"}", line 8, in start' in err
    assert "frames decoded" not in stdout.decode()
