"""stages.ingest.rtsp: backoff math, parameters, ids, and the lifecycle against URLs nobody serves.

The source against a real server (gst-rtsp-server) is in tests/integration/test_rtsp.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import av
import pytest
from pydantic import ValidationError

from pipeline.config import load_config, parse_config
from pipeline.errors import ConfigError
from pipeline.graph import build_graph
from pipeline.logs import redact
from pipeline.media import EndOfStream, Message, StreamStarted, StreamStatus
from pipeline.stage import StageContext
from stages.ingest.rtsp import RtspSource
from stages.ingest.rtsp_params import RtspParams, stream_id_from_url
from stages.ingest.rtsp_reconnect import Timeline, backoff_delay
from tests.fakes import EmitRecorder, FakeClock


def test_backoff_doubles_up_to_the_cap_with_full_jitter():
    top = [backoff_delay(n, 0.5, 10.0, lambda: 1.0) for n in range(1, 8)]
    assert top == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert [backoff_delay(n, 0.5, 10.0, lambda: 0.0) for n in range(1, 8)] == [0.0] * 7
    assert backoff_delay(3, 0.5, 10.0, lambda: 0.25) == 0.5  # uniform in [0, cap]: a quarter of 2 s
    assert backoff_delay(10_000, 0.5, 10.0, lambda: 0.5) == 5.0  # no overflow far out
    with pytest.raises(ValueError, match="counts from 1"):
        backoff_delay(0, 0.5, 10.0)


def test_backoff_with_the_real_random_stays_within_the_cap():
    for attempt in range(1, 10):
        cap = min(10.0, 0.5 * 2 ** (attempt - 1))
        assert all(0.0 <= backoff_delay(attempt, 0.5, 10.0) <= cap for _ in range(50))


def test_params_defaults():
    params = RtspParams.model_validate({"url": "rtsp://cam.local/live"})
    assert params.transport == "tcp"
    assert (params.open_timeout_s, params.read_timeout_s, params.stall_timeout_s) == (5.0, 5.0, 5.0)
    assert (params.backoff_initial_s, params.backoff_max_s, params.max_reconnects) == (0.5, 10.0, None)
    assert params.tracks == ["video"]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"url": "http://cam.local/live"}, "url"),
        ({"url": "rtsp://cam.local/live", "transport": "quic"}, "transport"),
        ({"url": "rtsp://cam.local/live", "stall_timeout_s": 0}, "stall_timeout_s"),
        ({"url": "rtsp://cam.local/live", "max_reconnects": -1}, "max_reconnects"),
        ({"url": "rtsp://cam.local/live", "backoff_initial_s": 5, "backoff_max_s": 1}, "backoff_max_s"),
        ({"url": "rtsp://cam.local/live", "tracks": ["video", "video"]}, "each track at most once"),
        ({"url": "rtsp://cam.local/live", "id": "a b"}, "id"),
        ({"url": "rtsp://cam.local/live", "stall_timeout": 3}, "stall_timeout"),
    ],
)
def test_params_validation(params: dict[str, Any], match: str):
    with pytest.raises(ValidationError, match=match):
        RtspParams.model_validate(params)


def test_a_bad_param_is_a_config_error_naming_the_yaml_path():
    config = parse_config(
        {
            "pipeline": "p",
            "stages": [{"name": "cam", "type": "rtsp", "params": {"url": "rtsp://x/y", "transport": "quic"}}],
        }
    )
    with pytest.raises(ConfigError, match=r"stages\[0\]\.params\.transport"):
        build_graph(config)


def test_stream_id_from_the_url_and_redaction():
    assert stream_id_from_url("rtsp://cam.local:8554/live/front-door") == "front-door"
    assert stream_id_from_url("rtsp://cam.local:8554/") == "cam_local"
    assert stream_id_from_url("rtsp://10.0.0.7/Streaming/Channels/101?transport=x") == "101"
    assert stream_id_from_url("rtsp://cam.local/a%20b") == "a_20b"
    assert redact("rtsp://admin:s3cret@cam.local:554/live") == "rtsp://admin:***@cam.local:554/live"
    assert redact("rtsp://cam.local/live") == "rtsp://cam.local/live"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there once the socket is closed


def _source(url: str, rand: Callable[[], float] = lambda: 0.5, **params: Any) -> RtspSource:
    values = {"url": url, "open_timeout_s": 2, "backoff_initial_s": 0.01, "backoff_max_s": 0.02, **params}
    return RtspSource("cam", RtspParams.model_validate(values), rand=rand)


async def _run(source: RtspSource, ctx: StageContext, until: Callable[[list[Message]], bool] | None = None):
    emit = EmitRecorder(then=source.request_stop, until=until)
    await source.start(ctx)
    await asyncio.wait_for(source.run(emit), timeout=60)  # a hang guard, not a timing assertion
    return emit.messages


async def test_unreachable_url_connects_reconnects_then_gives_up_naming_the_url(make_ctx):
    url = f"rtsp://127.0.0.1:{_closed_port()}/cam"
    ctx = make_ctx("cam")
    messages = await _run(_source(url, max_reconnects=1), ctx)
    statuses = [(m.status, m.detail) for m in messages if isinstance(m, StreamStatus)]
    assert [s for s, _ in statuses] == ["connecting", "reconnecting", "connecting"]
    assert all(m.stream_id == "cam" for m in messages if isinstance(m, StreamStatus))
    reconnecting = statuses[1][1]
    assert reconnecting is not None
    assert f"cannot open {url}" in reconnecting and "attempt 1 in 0.01 s" in reconnecting
    assert "reconnect attempt 1" in (statuses[2][1] or "")
    # Announced even so (subscribers see it start, fail and end), then one error end naming the URL.
    started, end = messages[-2], messages[-1]
    assert isinstance(started, StreamStarted) and started.info.live and started.info.video is None
    assert isinstance(end, EndOfStream) and end.reason == "error"
    assert end.error is not None and url in end.error and "gave up after 1 reconnect attempt" in end.error
    assert ctx.stats.stream("cam").error == end.error
    assert ctx.stats.stream("cam").reconnects == 0


async def test_max_reconnects_zero_gives_up_after_the_first_attempt(make_ctx):
    url = f"rtsp://127.0.0.1:{_closed_port()}/cam"
    messages = await _run(_source(url, max_reconnects=0), make_ctx("cam"))
    assert [m.status for m in messages if isinstance(m, StreamStatus)] == ["connecting"]
    end = messages[-1]
    assert isinstance(end, EndOfStream) and end.reason == "error" and "after 0 reconnect attempts" in (end.error or "")


async def test_request_stop_while_reconnecting_ends_the_stream_as_stopped(make_ctx):
    url = f"rtsp://127.0.0.1:{_closed_port()}/cam"
    source = _source(url, backoff_initial_s=60, backoff_max_s=60)  # would wait a minute

    def reconnecting(messages: list[Message]) -> bool:
        return any(isinstance(m, StreamStatus) and m.status == "reconnecting" for m in messages)

    messages = await _run(source, make_ctx("cam"), until=reconnecting)
    assert isinstance(messages[-2], StreamStarted)
    end = messages[-1]
    assert isinstance(end, EndOfStream) and end.reason == "stopped"
    assert sum(isinstance(m, EndOfStream) for m in messages) == 1


async def test_stop_stream_ends_it_and_another_stream_id_changes_nothing(make_ctx):
    url = f"rtsp://127.0.0.1:{_closed_port()}/front"
    source = _source(url, backoff_initial_s=60, backoff_max_s=60)
    assert source.stream_id == "front"

    def on_reconnecting(messages: list[Message]) -> bool:
        if any(isinstance(m, StreamStatus) and m.status == "reconnecting" for m in messages):
            source.stop_stream("other", "not mine")
            source.stop_stream("front", "decoder gave up")
        return False

    messages = await _run(source, make_ctx("cam"), until=on_reconnecting)
    end = messages[-1]
    assert isinstance(end, EndOfStream) and end.reason == "stopped"


async def test_the_password_never_appears_in_statuses_or_errors(make_ctx):
    url = f"rtsp://admin:s3cret@127.0.0.1:{_closed_port()}/cam"
    messages = await _run(_source(url, max_reconnects=1), make_ctx("cam"))
    text = repr(messages)
    assert "s3cret" not in text and "admin:***@" in text


# --- timestamps across sessions -------------------------------------------------------------------


def _conn(time_base: Fraction = Fraction(1, 90000), extradata: bytes = b"\x00\x00\x00\x01sps") -> Any:
    video = SimpleNamespace(codec="h264", extradata=extradata)
    return SimpleNamespace(streams={"video": object()}, video=video, time_bases={"video": time_base})


def _packet(pts: int | None, key: bool = False) -> Any:
    return SimpleNamespace(pts=pts, dts=pts, duration=3600, is_keyframe=key)


def test_a_new_session_starts_at_a_keyframe_after_the_last_one_in_media_time(monkeypatch):
    clock = FakeClock(1000.0)
    monkeypatch.setattr("stages.ingest.rtsp_reconnect.time.time", clock)
    first, timeline = _conn(), Timeline()
    timeline.begin(first, reconnected=False)
    placed = [timeline.place("video", _packet(p, key=p == 0), first) for p in (0, 3600, 7200)]
    assert [m.pts for m in placed if m is not None] == [0, 3600, 7200]

    clock.now += 2.0  # two seconds without media
    second = _conn()
    timeline.begin(second, reconnected=True)
    assert timeline.place("video", _packet(500_000), first) is None  # not a keyframe yet
    resumed = [timeline.place("video", _packet(p, key=p == 503_600), first) for p in (503_600, 507_200)]
    pts = [m.pts for m in resumed if m is not None]
    # The new session lands after the last packet's end (10800) plus the 2 s gap (180000 ticks).
    assert pts == [10800 + 180_000, 10800 + 180_000 + 3600]
    assert resumed[0] is not None and resumed[0].payload.pts == pts[0]  # the packet itself is shifted


def test_a_reconnect_with_new_parameter_sets_hands_them_to_the_decoder_in_band():
    first, timeline = _conn(extradata=b"\x00\x00\x00\x01old"), Timeline()
    timeline.begin(first, reconnected=False)
    timeline.place("video", SimpleNamespace(pts=0, dts=0, duration=1, is_keyframe=True, time_base=None), first)
    second = _conn(extradata=b"\x00\x00\x00\x01new")
    timeline.begin(second, reconnected=True)
    packet = av.Packet(b"\x00\x00\x00\x01\x65frame")
    packet.pts = packet.dts = 90
    packet.is_keyframe = True
    placed = timeline.place("video", packet, first)
    assert placed is not None and bytes(placed.payload).startswith(b"\x00\x00\x00\x01new\x00\x00\x00\x01\x65")


def test_the_example_config_builds_with_its_url_from_the_environment(monkeypatch):
    monkeypatch.setenv("STREAMGRAPH_RTSP_URL", "rtsp://camera.local:8554/cam1")
    graph = build_graph(load_config(Path(__file__).resolve().parents[3] / "configs" / "rtsp.yaml"))
    camera = graph.nodes["camera"].stage
    assert isinstance(camera, RtspSource)
    assert camera.params.url == "rtsp://camera.local:8554/cam1"
    assert graph.nodes["decode"].edge.policy == "drop_oldest"
