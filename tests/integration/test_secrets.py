"""Passwords never leave the process: an RTSP stream with a password in its URL, added at run time
to a camera that does not answer, fails; its events, its error, ``GET /streams``, the NATS
``list``, the metrics, the run's summary and every log record show the URL with the password
masked. The bus itself is reached with a password in its URL too."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import quote

import aiohttp
import nats
import pytest

from pipeline.bus import NatsServer, free_port
from pipeline.logs import JsonFormatter, TextFormatter

from .support import GUARD_S, Recorder, running_pipeline, until

PIPELINE = "secrets-test"
TOKEN = "s3cr3ts-t0ken"
RTSP_PASSWORD = "rtsp-pw-9f3c@x"
NATS_PASSWORD = "nats-pw-41d7"


def _no_secret(text: str, where: str) -> None:
    for secret in (RTSP_PASSWORD, quote(RTSP_PASSWORD, safe=""), NATS_PASSWORD, TOKEN):
        assert secret not in text, f"a secret in {where}: {text[:2000]}"


async def test_a_failed_rtsp_stream_with_a_password_shows_it_nowhere(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()  # nobody listens there: connection refused
    camera = f"rtsp://admin:{quote(RTSP_PASSWORD, safe='')}@127.0.0.1:{port}/cam"
    masked = f"rtsp://admin:***@127.0.0.1:{port}/cam"
    # The session's server has no authorization: it takes any user and password.
    bus_url = nats_server.url.replace("nats://", f"nats://streamgraph:{NATS_PASSWORD}@")
    config = {
        "pipeline": PIPELINE,
        "api": {"listen": "127.0.0.1:0", "token": TOKEN},
        "stages": [
            {"name": "cameras", "type": "streams"},
            {"name": "decode", "type": "decode", "inputs": ["cameras"]},
            {"name": "publish", "type": "publish", "inputs": ["decode"]},
        ],
    }
    auth = {"Authorization": f"Bearer {TOKEN}"}
    shown: dict[str, str] = {}
    async with Recorder(nats_server.url, PIPELINE) as recorder, running_pipeline(bus_url, config) as running:
        base = running.url
        async with aiohttp.ClientSession(headers=auth) as http:
            body = {"id": "cam", "uri": camera, "options": {"max_reconnects": 0, "open_timeout_s": 2}}
            async with http.post(f"{base}/streams", json=body) as response:
                shown["POST /streams"] = await response.text()
                assert response.status == 201, shown["POST /streams"]
            assert (await response.json())["uri"] == masked
            # A URL refused at once (a bad port) is refused without its password too.
            bad = {"id": "bad", "uri": camera.replace(str(port), "99999")}
            async with http.post(f"{base}/streams", json=bad) as response:
                shown["POST /streams (refused)"] = await response.text()
                assert response.status == 400, shown["POST /streams (refused)"]

            await asyncio.wait_for(recorder.ended("cam").wait(), GUARD_S)
            streams: list[dict[str, Any]] = []

            async def failed_listed() -> bool:
                async with http.get(f"{base}/streams") as response:
                    shown["GET /streams"] = await response.text()
                streams[:] = json.loads(shown["GET /streams"])["streams"]
                return any(s["state"] == "failed" for s in streams)

            await until_async(failed_listed, "the failed stream listed")
            (failed,) = streams
            assert failed["uri"] == masked and "refused" in failed["error"].lower(), failed
            assert masked in failed["error"]
            for route in ("/streams/cam", "/streams/cam/results", "/metrics", "/readyz"):
                async with http.get(f"{base}{route}") as response:
                    shown[f"GET {route}"] = await response.text()
        client = await nats.connect(nats_server.url)
        try:
            reply = await client.request(
                "streamgraph.control.streams.list", json.dumps({"token": TOKEN}).encode(), timeout=GUARD_S
            )
            shown["NATS list"] = reply.data.decode()
            assert json.loads(reply.data)["streams"][0]["uri"] == masked
        finally:
            await client.drain()

    events = recorder.recording.events["cam"]
    names = [event["event"] for event in events]
    assert "error" in names and names[-1] == "ended", names
    connecting = next(event for event in events if event["event"] == "connecting")
    assert masked in connecting["message"]  # the URL is shown, masked
    shown["events"] = json.dumps(events)
    assert running.summary is not None
    shown["summary"] = json.dumps(running.summary.failed_streams)
    records = caplog.records
    assert any(masked in record.getMessage() for record in records)  # the stream's URL was logged
    shown["log messages"] = "\n".join(record.getMessage() for record in records)
    shown["text logs"] = "\n".join(TextFormatter().format(record) for record in records)
    shown["json logs"] = "\n".join(JsonFormatter().format(record) for record in records)
    for where, text in shown.items():
        _no_secret(text, where)


async def until_async(check: Any, what: str) -> None:
    """``until`` for a check that must await (an HTTP request); a hang guard, not a timing assertion."""
    done = False

    async def poll() -> None:
        nonlocal done
        while not await check():
            await asyncio.sleep(0.05)
        done = True

    task = asyncio.ensure_future(poll())
    try:
        await until(lambda: done or task.done(), what)
        task.result()
    finally:
        task.cancel()
