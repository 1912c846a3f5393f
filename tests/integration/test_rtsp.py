"""The acceptance for RTSP: a real gst-rtsp-server camera, the real CLI, a real NATS subscriber.

The camera hangs (SIGSTOP), dies (SIGKILL) and comes back on the same port; the stream lives
through it: results resume on the same stream id with seq still increasing. No timing
assertions: every wait is a hang guard.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import parse_config
from pipeline.control import StreamSpec

from .support import Recorder, finish, running_pipeline, start_cli, until

GUARD_S = 60


def _config(tmp_path: Path, url: str) -> Path:
    config = tmp_path / "rtsp.yaml"
    config.write_text(
        f"""pipeline: rtsp-test
stages:
  - name: camera
    type: rtsp
    params:
      url: {url}
      id: door
      stall_timeout_s: 1.5
      read_timeout_s: 1.5
      open_timeout_s: 2
      backoff_initial_s: 0.1
      backoff_max_s: 0.5
  - name: decode
    type: decode
    inputs: [camera]
    edge: {{capacity: 32, policy: drop_oldest}}
  - name: publish
    type: publish
    inputs: [decode]
"""
    )
    return config


async def _until(condition: Callable[[], bool], process: asyncio.subprocess.Process, what: str) -> None:
    async def poll() -> None:
        while not condition():
            assert process.returncode is None, f"the pipeline exited while waiting for {what}"
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout=GUARD_S)
    except TimeoutError:
        raise AssertionError(f"no {what} within {GUARD_S} s (hang guard)") from None


async def test_rtsp_stream_survives_a_hung_then_restarted_camera(
    nats_server: Any, rtsp_server: Any, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    config = _config(tmp_path, rtsp_server.url)
    async with Recorder(nats_server.url, "rtsp-test") as recorder:
        recording = recorder.recording

        def results() -> list[dict[str, Any]]:
            return recording.results.get("door", [])

        def events() -> list[str]:
            return recording.event_names("door")

        process = await start_cli("run", str(config), "--nats-url", nats_server.url, "--no-progress", env=cli_env)
        try:
            await _until(lambda: len(results()) >= 25, process, "results from the camera")
            rtsp_server.pause()  # the camera hangs: the connection stays open, nothing comes
            await _until(lambda: "stalled" in events(), process, "'stalled' event")
            await _until(lambda: "reconnecting" in events()[events().index("stalled") :], process, "'reconnecting'")
            rtsp_server.kill()
            before = len(results())
            rtsp_server.start()  # back, on the same port
            await _until(lambda: len(results()) >= before + 25, process, "results after the restart")
        finally:
            if process.returncode is None:
                process.send_signal(2)  # SIGINT, as Ctrl-C sends
        await finish(process, recording, timeout_s=GUARD_S)
        await asyncio.wait_for(recorder.ended("door").wait(), timeout=30)

    assert recording.returncode == 0, recording.stderr
    assert "Traceback" not in recording.stderr

    names = recording.event_names("door")
    assert names[:3] == ["connecting", "started", "connected"], names
    stalled = names.index("stalled")
    assert "reconnecting" in names[stalled:]
    reconnected = [e for e in recording.events["door"][stalled:] if e["event"] == "connected"]
    assert reconnected, names
    assert re.search(r"resumed after [0-9.]+ s without media", reconnected[0]["message"])
    assert names[-1] == "ended" and "error" not in names
    ended = recording.events["door"][-1]
    assert ended["reason"] == "stopped"
    assert ended["reconnects"] >= 1
    assert "no packet for 1.5 s" in recording.events["door"][stalled]["message"]

    # One stream id throughout; seq never reused and always increasing, across the outage.
    seqs = [r["seq"] for r in results()]
    assert len(seqs) >= before + 25
    assert all(b > a for a, b in itertools.pairwise(seqs)), "seq went backwards or repeated"
    times = [r["media_time_s"] for r in results()]
    assert all(b >= a for a, b in itertools.pairwise(times)), "media time went backwards"
    assert all(r["frame"] == {"width": 640, "height": 360} for r in results())
    summary = re.search(r"(\d+) frames decoded, (\d+) messages published, (\d+) dropped", recording.stdout)
    assert summary, recording.stdout
    decoded, published, dropped = map(int, summary.groups())
    assert decoded == published + dropped and published == len(seqs)


async def test_an_rtsp_camera_over_udp_added_and_removed_at_run_time(nats_server: Any, rtsp_server: Any) -> None:
    """RTP over UDP, from a camera added through the stream control while the pipeline runs."""
    config = parse_config(
        {
            "pipeline": "rtsp-udp",
            "stages": [
                {"name": "cameras", "type": "streams"},
                {"name": "decode", "type": "decode", "inputs": ["cameras"], "edge": {"policy": "drop_oldest"}},
                {"name": "publish", "type": "publish", "inputs": ["decode"]},
            ],
        },
        base_dir=Path("."),
    )
    async with (
        Recorder(nats_server.url, "rtsp-udp") as recorder,
        running_pipeline(nats_server.url, config) as running,
    ):
        control = running.runner.control
        spec = StreamSpec(id="yard", uri=rtsp_server.url, options={"transport": "udp", "open_timeout_s": 10})
        await control.add(spec)
        assert control.list()[0]["type"] == "rtsp"
        await until(lambda: len(recorder.recording.results.get("yard", [])) >= 10, "results from the UDP camera")
        running.check_alive()
        await control.remove("yard")
        await asyncio.wait_for(recorder.ended("yard").wait(), GUARD_S)

    names = recorder.recording.event_names("yard")
    assert names[:3] == ["connecting", "started", "connected"], names
    assert names[-1] == "ended" and recorder.recording.events["yard"][-1]["reason"] == "stopped"
    seqs = [r["seq"] for r in recorder.recording.results["yard"]]
    assert seqs == sorted(set(seqs)) and len(seqs) >= 10
