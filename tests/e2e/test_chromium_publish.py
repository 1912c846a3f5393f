"""A real browser publishes over WHIP: headless Chromium opens ``/publish`` and sends its fake
camera and microphone to a pipeline run in this process.

The page starts by itself (``?autostart=1``), sends the bearer token it was given, and shows the
stream's results relayed from NATS (``/streams/{id}/results``). The test reads NATS itself, reads
the page over the DevTools protocol, then presses the page's Stop button: the stream ends
``stopped``. Needs Debian's ``chromium``; skips (saying how to install it) without one. No timing
assertions: every wait is a hang guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.support import GUARD_S, Recorder, running_pipeline, until
from tests.integration.test_whip import PIPELINE, ended_reason, listed, results_of, whip_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium on PATH: install it with `apt-get install -y chromium` (Debian)"
)

TOKEN = "e2e-token"
STREAM = "browser-cam"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--remote-debugging-port=0",
)


@contextlib.asynccontextmanager
async def chromium(url: str, profile: Path) -> AsyncIterator[int]:
    """Headless Chromium showing ``url``; yields its DevTools port. Killed (its whole process
    group) when the block ends."""
    assert CHROMIUM is not None
    process = await asyncio.create_subprocess_exec(
        CHROMIUM,
        *FLAGS,
        f"--user-data-dir={profile}",
        url,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        active = profile / "DevToolsActivePort"  # Chromium writes the port it bound here
        await until(lambda: active.is_file() and bool(active.read_text().strip()), "DevTools port from chromium")
        yield int(active.read_text().split()[0])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


class Page:
    """A page of ours (the publish page by default), over the DevTools protocol (Runtime.evaluate)."""

    def __init__(self, http: aiohttp.ClientSession, port: int, path: str = "/publish") -> None:
        self.http = http
        self.port = port
        self.path = path
        self._ids = 0

    async def evaluate(self, expression: str) -> Any:
        async with self.http.get(f"http://127.0.0.1:{self.port}/json/list") as response:
            targets = await response.json()
        page = next(t for t in targets if t["type"] == "page" and self.path in t["url"])
        self._ids += 1
        params = {"expression": expression, "returnByValue": True, "awaitPromise": True}
        request = {"id": self._ids, "method": "Runtime.evaluate", "params": params}
        async with self.http.ws_connect(page["webSocketDebuggerUrl"]) as ws:
            await ws.send_json(request)
            async for message in ws:
                data = message.json()
                if data.get("id") == self._ids:
                    return data["result"]["result"].get("value")
        raise AssertionError("DevTools closed the connection without an answer")

    async def wait_for_title(self, fragment: str) -> str:
        async def poll() -> str:
            while True:
                title = str(await self.evaluate("document.title"))
                if fragment in title:
                    return title
                await asyncio.sleep(0.2)

        try:
            return await asyncio.wait_for(poll(), GUARD_S)
        except TimeoutError:
            raise AssertionError(f"the page's title never said {fragment!r} (hang guard)") from None


async def test_chromium_publishes_camera_and_microphone(nats_server: Any, tmp_path: Path) -> None:
    query = f"stream={STREAM}&autostart=1&token={TOKEN}&tracks=video,audio"
    async with (
        Recorder(nats_server.url, PIPELINE) as recorder,
        running_pipeline(nats_server.url, whip_config(token=TOKEN)) as running,
        aiohttp.ClientSession() as http,
        chromium(f"{running.url}/publish?{query}", tmp_path / "profile") as devtools,
    ):
        await until(lambda: len(results_of(recorder, STREAM)) >= 10, f"results for {STREAM} on NATS")
        await until(
            lambda: any(r["time_base"] == "1/16000" for r in results_of(recorder, STREAM)),
            f"audio windows for {STREAM} (the fake microphone)",
        )
        # Chromium's fake camera may start after its microphone (a loaded machine): wait for both.
        await until(
            lambda: any("frame" in r for r in results_of(recorder, STREAM)),
            f"video frames for {STREAM} (the fake camera)",
        )
        frames = [r for r in results_of(recorder, STREAM) if "frame" in r]
        assert frames[0]["frame"]["width"] > 0
        assert recorder.recording.event_names(STREAM)[0] == "started"

        # The page got its stream's results back over server-sent events: from the very first
        # message, since it asked for them (with wait_s) before it sent its offer.
        page = Page(http, devtools)
        await page.wait_for_title("results")
        assert int(await page.evaluate("document.getElementById('count').textContent")) > 0
        # Each result's boxes are drawn over the camera (none here: nothing detects on this pipeline).
        assert await page.evaluate("state.drawn") == 0
        assert "  started" in str(await page.evaluate("document.getElementById('events').textContent"))

        # Its Stop button ends the WHIP session (DELETE), and the page sees the stream end.
        await page.evaluate("document.getElementById('stop').click()")
        assert await ended_reason(recorder, STREAM) == "stopped"
        await page.wait_for_title("ended (stopped)")
        assert not listed(running.runner, STREAM)
        counters = running.runner.stats.stream(STREAM)
        assert counters.decoded == counters.published + counters.dropped + counters.consumed
