"""A real browser watches a stream: headless Chromium opens ``/streams/<id>/view``, which plays
it over WHEP from a pipeline run in this process (YOLOv4-tiny, overlay, view), and a picture
sampled from its video element has the overlay's label tag where the results put the person.
Needs Debian's ``chromium``; skips (saying how to install it) without one, fails in CI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from tests.integration.support import Recorder, running_pipeline, until
from tests.integration.test_whep import (
    PIPELINE,
    STREAM,
    TOKEN,
    latest_box,
    source_frames,
    tag_pixels,
    tag_window,
    view_config,
)

from .test_chromium_publish import Page, chromium, pytestmark  # noqa: F401  (the same skip without chromium)


async def test_chromium_plays_the_overlaid_stream(nats_server: Any, tmp_path: Path) -> None:
    async with (
        Recorder(nats_server.url, PIPELINE) as recorder,
        running_pipeline(nats_server.url, view_config()) as running,
        aiohttp.ClientSession() as http,
    ):
        await until(lambda: len(recorder.recording.results.get(STREAM, [])) >= 3, "results of the stream")
        url = f"{running.url}/streams/{STREAM}/view?token={TOKEN}"
        async with chromium(url, tmp_path / "profile") as devtools:
            page = Page(http, devtools, path="/view")
            await page.wait_for_title(f"playing {STREAM}")
            assert await page.evaluate("document.getElementById('video').videoWidth") == 640
            x, y, w, h = tag_window(latest_box(recorder, "person"), 640, 424)
            pixels = np.array(await page.evaluate(f"window.grabPixels({x}, {y}, {w}, {h})"), np.int16)
            assert pixels.shape == (w * h, 3)
            drawn = tag_pixels(pixels, "person")
            plain = max(tag_pixels(frame[y : y + h, x : x + w].reshape(-1, 3), "person") for frame in source_frames())
            assert drawn >= 150 > plain, (drawn, plain)
            # Its Stop button ends the session (DELETE): the view stage lets the viewer go.
            view = running.runner.graph.nodes["view"].stage
            assert view.viewer_count(STREAM) == 1
            await page.evaluate("document.getElementById('stop').click()")
            await until(lambda: view.viewer_count(STREAM) == 0, "the viewer gone after Stop")
