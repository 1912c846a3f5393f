"""Every result's ``latency_ms`` parts add up to its ``total``, in real pipelines run to their end.

An accounting check, not a speed check: on a slow machine the parts grow, and so does the total.
The parts tile each item's time from capture to its message (``Item.mark``), so a stretch that no
part covers shows up here as a gap: a decoder's last frames handed back at the stream's end, a
window a stage held back, a file source at native rate behind its schedule, a join waiting for a
branch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.results import RUNTIME_LATENCY_KEYS

from .support import ROOT, Recording, run_to_end

ACCOUNTING_TOLERANCE_MS = 5.0
"""How far the parts may be from ``total``: every millisecond belongs to a named part."""

MODEL_KEYS = {"decode", "prepare", "batch_wait", "infer", "post"}


def unaccounted(message: dict[str, Any]) -> float:
    latency = message["latency_ms"]
    return float(latency["total"] - sum(ms for key, ms in latency.items() if key != "total"))


def assert_every_message_adds_up(recording: Recording, stream_id: str, keys: set[str]) -> list[dict[str, Any]]:
    assert recording.returncode == 0, recording.stderr
    results = recording.results.get(stream_id, [])
    assert results, f"no results for {stream_id}: {recording.stdout}"
    off = [(m["seq"], round(unaccounted(m), 3), m["latency_ms"]) for m in results]
    off = [entry for entry in off if abs(entry[1]) > ACCOUNTING_TOLERANCE_MS]
    assert not off, f"{len(off)} of {len(results)} messages do not add up (seq, total - parts, parts): {off[:5]}"
    expected = {*RUNTIME_LATENCY_KEYS, "total", *keys}
    missing = [
        (m["seq"], sorted(expected - set(m["latency_ms"]))) for m in results if not expected <= set(m["latency_ms"])
    ]
    assert not missing, missing[:5]
    return results


def config_with(source: Path, tmp_path: Path, change: dict[str, dict[str, Any]]) -> Path:
    """A copy of a shipped config in ``tmp_path``, with some stages' params changed."""
    config = yaml.safe_load(source.read_text())
    for stage in config["stages"]:
        for key, value in change.get(stage["name"], {}).items():
            stage[key] = {**stage.get(key, {}), **value}
    path = tmp_path / source.name
    path.write_text(yaml.safe_dump(config))
    return path


async def test_text_detect_every_frame_up_to_the_decoders_last_adds_up(
    nats_server: Any, sample_video: Path, ground_truth: dict[str, Any], cli_env: dict[str, str]
) -> None:
    config = str(ROOT / "configs" / "text-detect.yaml")
    recording = await run_to_end(nats_server.url, config, "text-detect", env=cli_env)
    results = assert_every_message_adds_up(recording, "sample", MODEL_KEYS)
    # All of them: the last frames come out of the decoder only when the stream ends.
    assert [m["seq"] for m in results] == list(range(ground_truth["frames"]))


async def test_a_live_file_whose_frames_infer_prepares_adds_up(
    nats_server: Any, sample_video: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    # live.yaml's graph on a file at native rate (live): drop_oldest edges, frames prepared just
    # before their model run, newer frames superseding older ones in the batcher, and the
    # source's lag behind its schedule as ``ingest``.
    live = yaml.safe_load((ROOT / "configs" / "live.yaml").read_text())
    source = {"name": "video", "type": "file", "params": {"path": str(sample_video), "id": "sample", "rate": "native"}}
    graph = [source, *(stage for stage in live["stages"] if stage["type"] != "streams")]
    graph[1]["inputs"] = ["video"]
    config = tmp_path / "live-file.yaml"
    config.write_text(yaml.safe_dump({"pipeline": "live-file", "stages": graph}))
    recording = await run_to_end(nats_server.url, str(config), "live-file", env=cli_env)
    assert_every_message_adds_up(recording, "sample", {"prepare", "batch_wait", "infer", "post"})


async def test_speech_windows_held_for_the_next_one_add_up(
    nats_server: Any, av_sample: Path, cli_env: dict[str, str], tmp_path: Path
) -> None:
    # Every window published (per_window): each is held in speech_segments until the next
    # arrives, the last until the stream ends; that wait is its ``held`` part.
    config = config_with(
        ROOT / "configs" / "vad.yaml",
        tmp_path,
        {"audio": {"params": {"path": str(av_sample)}}, "speech": {"params": {"per_window": True}}},
    )
    recording = await run_to_end(nats_server.url, str(config), "vad", ("speech",), env=cli_env)
    results = assert_every_message_adds_up(recording, "speech", {"decode", "infer", "post", "held"})
    assert all(m["latency_ms"]["held"] > 0 for m in results)


async def test_an_ensemble_whose_frames_wait_for_the_audio_branch_adds_up(
    nats_server: Any, av_sample: Path, cli_env: dict[str, str]
) -> None:
    config = str(ROOT / "configs" / "av-ensemble.yaml")
    recording = await run_to_end(nats_server.url, config, "av-ensemble", env=cli_env)
    results = assert_every_message_adds_up(recording, "sample", {*MODEL_KEYS, "held"})
    assert all(m["results"]["speech"]["type"] == "join" for m in results)
