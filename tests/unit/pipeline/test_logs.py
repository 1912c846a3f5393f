"""pipeline.logs: our level for our loggers, WARNING for third-party ones (but at DEBUG), and a JSON
format with one object per line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from pipeline.logs import QUIETER, setup_logging

THIRD_PARTY = ("aioice.ice", "aiortc.rtcpeerconnection", "aiohttp.access", "nats.aio.client")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``setup_logging`` sets the root's handler and levels: put them back for the next test."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in QUIETER}
    yield
    root.handlers[:], level = saved
    root.setLevel(level)
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


def lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line]


@pytest.mark.parametrize("level", ["INFO", "WARNING"])
def test_third_party_info_is_hidden_and_their_warnings_shown(level: str, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(level)
    for name in THIRD_PARTY:
        logging.getLogger(name).info("chatter from %s", name)
        logging.getLogger(name).warning("trouble in %s", name)
    err = capsys.readouterr().err
    assert "chatter" not in err
    for name in THIRD_PARTY:
        assert f"WARNING {name}: trouble in {name}" in err


def test_our_level_applies_to_our_loggers(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO")
    logging.getLogger("streamgraph.stage.det").info("model loaded")
    logging.getLogger("streamgraph.stage.det").debug("batch of 3")
    setup_logging("ERROR")
    logging.getLogger("streamgraph.bus").warning("disconnected")
    logging.getLogger("aioice.ice").warning("candidate failed")  # ERROR is quieter than WARNING
    logging.getLogger("streamgraph.bus").error("gone")
    assert [line.split(" ", 1)[1] for line in lines(capsys.readouterr().err)] == [
        "INFO  streamgraph.stage.det: model loaded",
        "ERROR streamgraph.bus: gone",
    ]
    # Only the root's level and handler carry the setting: nothing sticks to other loggers.
    assert logging.getLogger("streamgraph").level == logging.NOTSET
    assert logging.getLogger("aioice").level == logging.NOTSET


def test_debug_shows_everything_including_third_party_chatter(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("DEBUG")
    logging.getLogger("aioice.ice").info("Connection(0) Check CandidatePair succeeded")
    logging.getLogger("libav.h264").warning("concealing errors")
    logging.getLogger("streamgraph.runner").debug("edge depth 3")
    err = capsys.readouterr().err
    assert "aioice.ice: Connection(0) Check CandidatePair succeeded" in err
    assert "libav.h264: concealing errors" in err
    assert "streamgraph.runner: edge depth 3" in err


def test_ffmpeg_warnings_stay_hidden_below_debug(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO")
    logging.getLogger("libav.h264").warning("concealing errors")
    logging.getLogger("libav.h264").error("no frame")
    err = capsys.readouterr().err
    assert "concealing" not in err
    assert "no frame" in err


def test_json_is_one_object_per_line_with_the_exception(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    log = logging.getLogger("streamgraph.stage.det")
    log.info("two\nlines")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("stage %s failed", "det")
    logging.getLogger("aioice.ice").info("hidden in json too")
    records = [json.loads(line) for line in lines(capsys.readouterr().err)]
    assert [(r["level"], r["logger"], r["message"]) for r in records] == [
        ("INFO", "streamgraph.stage.det", "two\nlines"),
        ("ERROR", "streamgraph.stage.det", "stage det failed"),
    ]
    assert "exception" not in records[0]
    assert records[1]["exception"].startswith("Traceback (most recent call last):")
    assert records[1]["exception"].endswith("RuntimeError: boom")
    for record in records:
        assert record["time"].endswith("+00:00") and "T" in record["time"]  # ISO 8601, UTC


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="TRACE"):
        setup_logging("TRACE")
