"""``make demo`` shows what the pipeline found: ``streamgraph run --show N`` prints a line per stream
event and per result (the first N of each stream), from the messages on the bus, matching what
any other subscriber receives."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from .support import ROOT, Recorder, finish, start_cli


def demo_arguments() -> list[str]:
    """The arguments ``make demo`` gives ``streamgraph`` (the recipe of the Makefile's demo target)."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    target = next(i for i, line in enumerate(lines) if line.startswith("demo:"))
    command = shlex.split(lines[target + 1].strip())
    assert command[0] == "$(BIN)/streamgraph", command
    return command[1:]


async def test_make_demo_prints_the_results_a_subscriber_receives(
    nats_server: Any, sample_video: Path, cli_env: dict[str, str]
) -> None:
    arguments = demo_arguments()
    assert "--show" in arguments, "make demo must show results"
    shown = int(arguments[arguments.index("--show") + 1])
    assert shown > 0
    async with Recorder(nats_server.url, "text-detect") as recorder:
        process = await start_cli(*arguments, "--nats-url", nats_server.url, "--no-progress", env=cli_env)
        await finish(process, recorder.recording)
    recording = recorder.recording
    assert recording.returncode == 0, recording.stderr
    lines = recording.stdout.splitlines()
    assert lines[0] == (
        f"showing every stream event and the first {shown} results of each stream, "
        "as a subscriber to streamgraph.text-detect.> receives them"
    )
    assert lines[1] == "[sample] started"
    received = recording.results["sample"]
    result_line = re.compile(r"\[sample\] #(\d+) (\d+\.\d\d) s  text: (\d+) boxes, score [\d.-]+  \(latency \d+ ms\)")
    for line, message in zip(lines[2 : 2 + shown], received[:shown], strict=True):
        match = result_line.fullmatch(line)
        assert match, line
        seq, media_time, boxes = match.groups()
        assert int(seq) == message["seq"]
        assert float(media_time) == round(message["media_time_s"], 2)
        assert int(boxes) == len(message["results"]["text"]["boxes"]) > 0  # the sample shows text in every frame
    assert lines[2 + shown] == f"[sample] more results, not shown (--show {shown})"
    frames = recording.events["sample"][-1]["frames"]
    counts = f"{frames['decoded']} decoded, {frames['published']} published, {frames['dropped']} dropped"
    assert lines[3 + shown] == f"[sample] ended (eof): {counts}"
    # Then the table streamgraph top shows: one row per stream, from the messages received.
    table = lines[4 + shown : -1]
    assert table[0].strip() == "text-detect: every stream"
    assert "fps" in table[2] and "p99 ms" in table[2]
    row = [cell.strip() for cell in table[4].split("│")[1:-1]]
    assert row[:4] == ["text-detect", "sample", "ended", str(frames["published"])] and row[7] == "0"
    assert row[8].startswith("text: ")
    assert lines[-1].startswith(f"text-detect done: 1 stream(s), {frames['decoded']} frames decoded")
    assert len(table) == 6  # title, three rules, the header, one row
