"""pipeline.cli in-process: exit codes, one-line errors, and the run summary line.

The CLI as a subprocess (the demo config, many config errors) is covered by
tests/integration/test_cli.py; these tests cover the logic behind it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import __version__, cli
from pipeline.bus import free_port
from pipeline.runner import RunSummary
from pipeline.stats import StreamStats


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``main`` points the root logger at the (captured) stderr: put things back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in ("nats", "libav")}
    yield
    root.handlers[:], level = saved
    root.setLevel(level)
    for name, value in quiet.items():
        logging.getLogger(name).setLevel(value)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def test_validate_bad_config_exits_2_with_one_line_naming_the_yaml_path(tmp_path, capsys):
    config = write(
        tmp_path,
        """
pipeline: demo
runtime:
  threads: four
stages:
  - {name: video, type: file, params: {path: clip.mp4}}
""",
    )
    assert cli.main(["validate", str(config)]) == cli.EXIT_USAGE == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"error: {config}: runtime.threads: expected int, got 'four'"]


def test_validate_stage_error_names_the_stage_path(tmp_path, capsys):
    config = write(
        tmp_path,
        """
pipeline: demo
stages:
  - {name: video, type: file, params: {path: clip.mp4, rate: fast}}
""",
    )
    assert cli.main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: {config}: stages[0].params.rate: ")
    assert "'fast'" in err
    assert "Traceback" not in err


def test_validate_missing_file_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert cli.main(["validate", str(missing)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: {missing}: cannot read config")


def test_validate_good_config_exits_0_and_lists_the_stages(tmp_path, capsys, sample_video):
    config = write(
        tmp_path,
        f"""
pipeline: demo
stages:
  - {{name: video, type: file, params: {{path: '{sample_video}'}}}}
  - {{name: decode, type: decode, inputs: [video]}}
  - {{name: publish, type: publish, inputs: [decode]}}
""",
    )
    assert cli.main(["--log-level", "WARNING", "validate", str(config)]) == cli.EXIT_OK == 0
    out, err = capsys.readouterr()
    assert out == f"{config}: ok (pipeline demo, 3 stages: video -> decode -> publish)\n"
    assert err == ""


def test_unknown_model_card_is_a_usage_error(capsys):
    assert cli.main(["models", "pull", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert "unknown model 'no-such-model'" in err


def test_bus_error_is_a_failure_not_a_usage_error(tmp_path, capsys, sample_video):
    # A BusError is a ConnectionError, not a ValueError: exit 1, still one line, no traceback.
    config = write(
        tmp_path,
        f"""
pipeline: demo
stages:
  - {{name: video, type: file, params: {{path: '{sample_video}'}}}}
  - {{name: publish, type: publish, inputs: [video]}}
""",
    )
    code = cli.main(["--log-level", "WARNING", "run", str(config), "--nats-url", "http://127.0.0.1:4222"])
    assert code == cli.EXIT_FAILED == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "error: nats.url: expected 'embedded' or nats://host:port (nats, tls, ws, wss), got 'http://127.0.0.1:4222'"
    ]


def test_subscribe_to_a_dead_server_is_one_line_without_tracebacks(capsys):
    url = f"nats://127.0.0.1:{free_port()}"  # nobody listens there
    assert cli.main(["--log-level", "WARNING", "subscribe", "--nats-url", url, "x.>"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"error: cannot connect to NATS at {url}")
    assert "Traceback" not in err


def test_log_format_json_makes_every_log_line_a_json_object(capsys):
    url = f"nats://127.0.0.1:{free_port()}"  # nobody listens: each failed attempt is logged
    args = ["--log-format", "json", "subscribe", "--nats-url", url, "x.>"]
    assert cli.main(args) == cli.EXIT_FAILED
    *logged, last = capsys.readouterr().err.splitlines()
    assert last.startswith(f"error: cannot connect to NATS at {url}")  # the command's own verdict
    records = [json.loads(line) for line in logged]
    assert records, "the failed attempts are logged"
    assert {(r["level"], r["logger"]) for r in records} == {("WARNING", "streamgraph.subscribe")}


def test_help_lists_the_exit_codes(capsys):
    for argv in (["--help"], ["run", "--help"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "exit codes:" in out
        for line in ("  0    success", "  1    the pipeline failed", "  2    a config error", "  130  interrupted"):
            assert line in out, (argv, line)


@pytest.mark.parametrize("argv", [["run", "x.yaml", "--show", "-1"], ["subscribe", "--reconnect-s", "-5"]])
def test_negative_counts_and_durations_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "expected 0 or more" in capsys.readouterr().err


def test_keyboard_interrupt_exits_130(monkeypatch, tmp_path, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_validate", interrupted)
    assert cli.main(["validate", str(tmp_path / "x.yaml")]) == 130
    assert capsys.readouterr().err == ""


def test_usage_mistakes_exit_2_through_argparse(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"streamgraph {__version__}"


# --- _summary_line ------------------------------------------------------------------------------------


def stats_for(decoded: dict[str, int], published: dict[str, int]) -> StreamStats:
    stats = StreamStats()
    for stream_id, count in decoded.items():
        stats.stream(stream_id).decoded = count
    for stream_id, count in published.items():
        stats.stream(stream_id).published = count
    return stats


def test_summary_line_counts_streams_frames_and_rate():
    stats = stats_for({"a": 100, "b": 50}, {"a": 100, "b": 50})
    line = cli._summary_line(RunSummary("demo", elapsed_s=3.0, stats=stats, interrupted=False))
    assert line == (
        "demo done: 2 stream(s), 150 frames decoded, 150 messages published, 0 dropped, 3.0 s "
        "(50.0 frames decoded/s, 50.0 messages/s)"
    )


def test_summary_line_lists_drops_by_reason_sorted():
    stats = stats_for({"a": 10, "b": 10}, {"a": 7, "b": 9})
    stats.count_drop("a", "shutdown", 2)
    stats.count_drop("a", "edge:infer", 1)
    stats.count_drop("b", "edge:infer", 1)
    line = cli._summary_line(RunSummary("demo", elapsed_s=2.0, stats=stats, interrupted=True))
    assert line.startswith("demo stopped: 2 stream(s), 20 frames decoded, 16 messages published, ")
    assert "4 dropped (edge:infer: 2, shutdown: 2), 2.0 s (" in line and "8.0 messages/s)" in line


def test_summary_line_appends_consumed_windows_only_when_there_are_some():
    stats = stats_for({"mic": 313}, {"mic": 4})
    stats.stream("mic").consumed = 308
    stats.count_drop("mic", "shutdown")
    line = cli._summary_line(RunSummary("vad", elapsed_s=2.0, stats=stats, interrupted=False))
    assert line == (
        "vad done: 1 stream(s), 313 frames decoded, 4 messages published, 1 dropped (shutdown: 1), "
        "308 consumed, 2.0 s (156.5 frames decoded/s, 2.0 messages/s)"  # audio windows are not messages
    )


def test_summary_line_with_no_elapsed_time_has_zero_rate():
    line = cli._summary_line(RunSummary("demo", elapsed_s=0.0, stats=StreamStats(), interrupted=False))
    assert line == (
        "demo done: 0 stream(s), 0 frames decoded, 0 messages published, 0 dropped, 0.0 s "
        "(0.0 frames decoded/s, 0.0 messages/s)"
    )


# --- run_exit_code ------------------------------------------------------------------------------------


def failed(stream_ids: dict[str, bool]) -> StreamStats:
    """Stats where each stream failed; the flag: it was added at run time (API, NATS)."""
    stats = StreamStats()
    stats.stream("healthy").decoded = 10
    for stream_id, added in stream_ids.items():
        stats.stream(stream_id).error = "source x: InvalidDataError: garbage"
        stats.stream(stream_id).added_at_run_time = added
    return stats


@pytest.mark.parametrize(
    ("streams", "interrupted", "code"),
    [
        ({}, False, 0),  # a batch job that went well
        ({}, True, 0),
        ({"cam": True}, True, 0),  # the reported case: Ctrl-C of a service after an API stream failed
        ({"cam": True}, False, 0),  # ... or the service ended by itself (``stay_open: false``)
        ({"file": False}, False, 1),  # a batch job whose input failed
        ({"file": False, "cam": True}, False, 1),
        ({"file": False}, True, 0),  # a stop asked for is a clean stop
    ],
)
def test_run_exit_code(streams, interrupted, code):
    summary = RunSummary("demo", elapsed_s=1.0, stats=failed(streams), interrupted=interrupted)
    assert cli.run_exit_code(summary) == code
