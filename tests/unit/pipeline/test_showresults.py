"""pipeline.showresults: the short lines of ``streamgraph run --show N``, from messages as published.

The messages here are shaped as docs/messages.md shows them; tests/integration/test_run_show.py
runs ``--show`` on a real pipeline and bus.
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.showresults import ResultPrinter, event_line, result_line


def result(stream_id: str, seq: int, results: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "pipeline": "demo",
        "stream_id": stream_id,
        "seq": seq,
        "media_time_s": seq / 25,
        "results": results,
        "latency_ms": {"total": 61.5},
        "drops": {"total": 0, "by_reason": {}},
        **extra,
    }


def box(score: float) -> dict[str, Any]:
    return {"box": [38.0, 21.4, 402.5, 69.7], "quad": [], "score": score}


def test_a_text_detection_says_how_many_boxes_and_their_scores() -> None:
    body = result("sample", 41, {"text": {"type": "text_detection", "model": "m", "boxes": [box(0.87), box(0.93)]}})
    assert result_line(body) == "[sample] #41 1.64 s  text: 2 boxes, score 0.87-0.93  (latency 62 ms)"
    one = result("sample", 0, {"text": {"type": "text_detection", "boxes": [box(0.9)]}})
    assert "text: 1 box, score 0.90 " in result_line(one)


def test_recognized_text_is_quoted_and_clipped() -> None:
    lines = [{"text": t, "score": 0.99} for t in ["STREAMGRAPH DEMO", "x" * 60, "a", "b", "c"]]
    body = result("cam", 3, {"ocr": {"type": "text_recognition", "lines": lines}}, drops={"total": 4})
    line = result_line(body)
    assert line.startswith('[cam] #3 0.12 s  ocr: "STREAMGRAPH DEMO", "xxx')
    assert "…" in line and "x" * 41 not in line
    assert line.endswith('"a", "b" and 1 more  (latency 62 ms, 4 dropped so far)')


def test_speech_segments_join_and_unknown_results() -> None:
    speech = {"type": "speech_segments", "segments": [{"start_s": 0.802, "end_s": 1.662}]}
    joined = {"type": "join", "branch": "speech", "status": "ok", "items": [{"seq": 32}]}
    mine = {"type": "brightness", "mean": 80.0, "regions": [1, 2, 3]}
    body = result("av", 25, {"speech": speech, "joined": joined, "mine": mine, "nothing": {"type": "x"}})
    assert result_line(body) == (
        "[av] #25 1.00 s  speech: speech 0.80-1.66 s; joined: speech ok, 1 item; mine: brightness, 3 regions; "
        "nothing: x  (latency 62 ms)"
    )
    assert "  no results  " in result_line(result("s", 0, {}))


def test_events_say_what_happened_to_the_stream() -> None:
    assert event_line({"stream_id": "sample", "event": "started"}) == "[sample] started"
    ended = {"stream_id": "sample", "event": "ended", "reason": "eof", "frames": {"decoded": 250, "published": 249}}
    assert event_line(ended) == "[sample] ended (eof): 250 decoded, 249 published"
    error = {"stream_id": "bad", "event": "error", "message": "bad.mp4: Invalid data"}
    assert event_line(error) == "[bad] error: bad.mp4: Invalid data"
    reconnecting = {"stream_id": "cam", "event": "reconnecting", "message": "attempt 1 in 0.31 s"}
    assert event_line(reconnecting) == "[cam] reconnecting: attempt 1 in 0.31 s"


def test_the_printer_shows_n_results_per_stream_and_every_event() -> None:
    written: list[str] = []
    printer = ResultPrinter("streamgraph", "demo", per_stream=2, write=written.append)

    def send(subject: str, body: dict[str, Any]) -> None:
        printer.handle(subject, json.dumps(body).encode())

    send("streamgraph.demo.a.events", {"stream_id": "a", "event": "started"})
    for seq in range(5):
        send("streamgraph.demo.a", result("a", seq, {}))
        send("streamgraph.demo.b_c", result("b.c", seq, {}))  # a dot in an id is "_" in the subject
    send("streamgraph.demo.a.events", {"stream_id": "a", "event": "ended", "reason": "eof"})
    printer.handle("streamgraph.demo.z.events", b"not json")
    assert [line.split("  ")[0] for line in written] == [
        "[a] started",
        "[a] #0 0.00 s",
        "[b.c] #0 0.00 s",
        "[a] #1 0.04 s",
        "[b.c] #1 0.04 s",
        "[a] more results, not shown (--show 2)",
        "[b.c] more results, not shown (--show 2)",
        "[a] ended (eof)",
        "(not an event message) not json",
    ]


def test_a_prefix_with_dots_still_tells_events_from_results() -> None:
    written: list[str] = []
    printer = ResultPrinter("acme.video", "demo", per_stream=1, write=written.append)
    printer.handle("acme.video.demo.events", json.dumps(result("events", 0, {})).encode())  # a stream named "events"
    printer.handle("acme.video.demo.events.events", json.dumps({"stream_id": "events", "event": "started"}).encode())
    assert written == ["[events] #0 0.00 s  no results  (latency 62 ms)", "[events] started"]
