"""The HTTP API of a live service, fuzzed (hypothesis): every request gets an answer that says
whose fault it is, a 4xx with a reason (JSON ``{"error": "..."}``) for a wrong one, never a 500
and never a traceback, in the reply or in the service's log.

The real CLI runs a pipeline with a ``streams`` source and the API against the session's
nats-server; the requests are random JSON shapes, wrong types, unknown fields, huge and deeply
nested bodies, and ids that would break a NATS subject or a path (``../``, ``a.b``, ``*``, ``>``,
spaces, 1 kB). A request that happens to be valid (201) is undone (DELETE) and must be too.
Example counts are modest and the runs derandomized (CI reproducible).
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.bus import free_port

from .support import GUARD_S, ROOT

TOKEN = "fuzz-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FUZZ = settings(
    max_examples=120, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)

TRICKY_IDS = ["../x", "..", ".", "a.b", "*", ">", "a b", " ", "x" * 1024, "", "a/b", "%2e%2e", "a\\b", "é", "\x00"]


@dataclass
class Service:
    port: int
    process: subprocess.Popen[str]
    sample: Path

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=GUARD_S)
        try:
            connection.request(method, path, body=body, headers={**AUTH, **(headers or {})})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def service(nats_server: Any, sample_video: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    port = free_port()
    config = tmp_path_factory.mktemp("fuzz") / "fuzz.yaml"
    config.write_text(
        f"""pipeline: fuzz-api
api: {{listen: "127.0.0.1:{port}", token: {TOKEN}}}
runtime: {{threads: 2}}
stages:
  - {{name: cams, type: streams, params: {{max_streams: 8}}}}
  - {{name: decode, type: decode, inputs: [cams]}}
  - {{name: publish, type: publish, inputs: [decode]}}
"""
    )
    log = config.with_name("service.log")  # a file, not a pipe: nobody reads a pipe while the tests run
    command = [sys.executable, "-m", "pipeline.cli", "run", str(config), "--nats-url", nats_server.url, "--no-progress"]
    with log.open("w") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, text=True)
    running = Service(port, process, sample_video)
    try:
        _wait_ready(running)
        yield running
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=GUARD_S)
    logged = log.read_text()
    assert "Traceback" not in logged, logged[-4000:]


def _wait_ready(service: Service) -> None:
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        assert service.process.poll() is None, "the service exited before it was ready"
        try:
            if service.request("GET", "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the service was not ready within {GUARD_S:g} s (hang guard)")


def assert_refused_with_a_reason(status: int, body: bytes, what: object) -> None:
    assert 400 <= status < 500, (status, body[:300], what)
    answer = json.loads(body)
    assert isinstance(answer, dict) and set(answer) == {"error"}, answer
    assert isinstance(answer["error"], str) and answer["error"].strip(), answer
    assert "Traceback" not in answer["error"]


def assert_answered(service: Service, status: int, body: bytes, what: object) -> None:
    """A 4xx with a reason; or, for a request that was valid after all, success (then undone)."""
    if status == 201:
        stream_id = json.loads(body)["id"]
        removed, answer = service.request("DELETE", f"/streams/{stream_id}")
        assert removed == 200, (removed, answer)
        return
    assert_refused_with_a_reason(status, body, what)


# --- strategies ------------------------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=16)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
IDS = st.sampled_from(TRICKY_IDS) | st.text(max_size=20) | st.sampled_from(["cam", "cam-1", "x" * 128, "x" * 129])
URIS = st.sampled_from(
    [
        "missing.mp4",
        "/nowhere/missing.mp4",
        "whip:",
        "ftp://127.0.0.1/x.mp4",
        "rtsp://",
        "rtsp://127.0.0.1:99999/x",
        "file:///nowhere/x.mp4",
        ".",
        "",
        "SAMPLE",  # the sample video (its path is known once the service runs)
    ]
) | st.text(max_size=20).filter(lambda uri: ":" not in uri)  # a path: never a host on the network
OPTIONS = st.dictionaries(
    st.sampled_from(["rate", "loop", "tracks", "transport", "id", "path", "url", "bogus"]) | st.text(max_size=6),
    JSON_VALUES,
    max_size=3,
)
VALID_IDS = st.sampled_from(["cam", "cam-1", "Front_Door", "x" * 128])
STREAM_SPECS = st.fixed_dictionaries(
    {},
    optional={
        "id": IDS | JSON_VALUES,
        "uri": URIS | JSON_VALUES,
        "options": OPTIONS | JSON_VALUES,
        "source": st.sampled_from(["cams", "nope"]) | JSON_VALUES,
        "extra": JSON_VALUES,
    },
)
NEARLY_VALID_SPECS = st.builds(
    lambda stream_id, uri, options, more: {"id": stream_id, "uri": uri, **options, **more},
    VALID_IDS,
    URIS,
    st.just({}) | st.fixed_dictionaries({"options": OPTIONS}),
    st.just({}) | st.fixed_dictionaries({}, optional={"source": st.sampled_from(["cams", "nope"]), "x": JSON_VALUES}),
)
"""A valid id, so that what follows it is looked at too: the URI (some of them, the sample, valid),
the options, the source."""


# --- the properties ----------------------------------------------------------------------------------


def post_json(service: Service, body: Any) -> None:
    if isinstance(body, dict) and body.get("uri") == "SAMPLE":
        body["uri"] = str(service.sample)
    headers = {"Content-Type": "application/json"}
    status, answer = service.request("POST", "/streams", json.dumps(body).encode(), headers)
    assert_answered(service, status, answer, body)


@FUZZ
@given(STREAM_SPECS | JSON_VALUES)
def test_post_streams_with_any_json_is_answered_with_a_reason(service: Service, body: Any) -> None:
    post_json(service, body)


@FUZZ
@given(NEARLY_VALID_SPECS)
def test_post_streams_with_a_valid_id_and_anything_else_is_answered_with_a_reason(service: Service, body: Any) -> None:
    post_json(service, body)


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_post_streams_with_any_bytes_is_answered_with_a_reason(service: Service, body: bytes) -> None:
    status, answer = service.request("POST", "/streams", body, {"Content-Type": "application/json"})
    assert_answered(service, status, answer, body)


@FUZZ
@given(
    IDS,
    st.sampled_from(["GET /streams/{}", "DELETE /streams/{}", "GET /streams/{}/results", "POST /whip/{}"]),
    st.booleans(),
)
def test_any_id_in_a_path_is_answered_with_a_reason(service: Service, stream_id: str, route: str, raw: bool) -> None:
    # Quoted (what a client sends for an id), or as it is where HTTP allows (path tricks: ../, *, >).
    sendable = raw and stream_id.isascii() and stream_id.isprintable() and " " not in stream_id
    segment = stream_id if sendable else quote(stream_id, safe="")
    method, path = route.split(" ")
    headers = {"Content-Type": "application/sdp"} if method == "POST" else {}
    status, answer = service.request(method, path.format(segment), b"v=0\r\n" if method == "POST" else None, headers)
    assert_refused_with_a_reason(status, answer, (method, path, stream_id))


@FUZZ
@given(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]), st.text(max_size=30), st.text(max_size=12))
def test_any_route_and_query_is_answered_with_a_reason(service: Service, method: str, path: str, query: str) -> None:
    target = "/" + quote(path, safe="/.") + "?wait_s=" + quote(query, safe="")
    status, answer = service.request(method, target, b"{}")
    if status == 200:  # a route that exists and takes this (GET /streams, GET /metrics, ...)
        assert method == "GET", (method, target)
        return
    assert_answered(service, status, answer, target)


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"x" * (3 << 20), 413, "Maximum request body size"),
        (b"[" * 200_000, 400, "not valid JSON"),
        (b'{"id": "a", "uri": "' + b"a" * 900_000 + b'"}', 400, "File name too long"),
        (json.dumps({"id": "a", "uri": "x", "options": {"a": [[[[[[[[{"b": None}]]]]]]]]}}).encode(), 400, "options"),
        (b"\xff\xfe\x00", 400, "not valid JSON"),
        (b'{"id": "a", "uri": "x.mp4", "id": "b.c"}', 400, "id: expected a stream id"),
    ],
)
def test_huge_deep_and_odd_bodies(service: Service, body: bytes, status: int, says: str) -> None:
    answered, answer = service.request("POST", "/streams", body, {"Content-Type": "application/json"})
    assert_refused_with_a_reason(answered, answer, body[:80])
    assert answered == status and says in json.loads(answer)["error"]


def test_the_service_is_still_serving_and_nothing_was_left_running(service: Service) -> None:
    status, body = service.request("GET", "/readyz")
    assert status == 200, body
    status, body = service.request("GET", "/streams")
    assert status == 200
    assert [s for s in json.loads(body)["streams"] if s["state"] != "failed"] == []
