"""``api.media_roots``: a stream added at run time (HTTP, NATS) reads local files only under the
media roots or the config's own directory; every other path gets one refusal (403) that says
nothing of whether the path exists. Against a real service: its HTTP API and a real nats-server."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from pipeline.config import parse_config
from pipeline.control_nats import control_subject
from pipeline.errors import ConfigError
from pipeline.service import build
from stages.ingest.streams import MEDIA_NOT_ALLOWED

from .support import GUARD_S, Running, running_pipeline

PIPELINE = "media-roots"


def config_dict(media_roots: list[str]) -> dict[str, Any]:
    return {
        "pipeline": PIPELINE,
        "nats": {"prefix": "roots"},
        "api": {"listen": "127.0.0.1:0", "media_roots": media_roots},
        "stages": [
            {"name": "cams", "type": "streams"},
            {"name": "decode", "type": "decode", "inputs": ["cams"]},
            {"name": "sink", "class": "tests.fakes:CountingSink", "inputs": ["decode"]},
        ],
    }


@pytest.fixture()
def layout(tmp_path: Path, sample_video: Path) -> dict[str, Path]:
    """service/ (the config's folder), media/ (a root), outside/ (neither), and the files in them."""
    service, media, outside = (tmp_path / name for name in ("service", "media", "outside"))
    for folder in (service, media, outside):
        folder.mkdir()
    paths = {
        "beside_config": service / "beside.mp4",
        "in_root": media / "clip.mp4",
        "outside": outside / "secret.mp4",
    }
    for path in paths.values():
        shutil.copy(sample_video, path)
    (media / "escape.mp4").symlink_to(paths["outside"])
    paths["symlink_out"] = media / "escape.mp4"
    paths["dotdot_out"] = media / ".." / "outside" / "secret.mp4"
    paths["missing_out"] = outside / "no-such.mp4"
    return {**paths, "service": service, "media": media}


@pytest.fixture()
async def service(nats_server: Any, layout: dict[str, Path]) -> AsyncIterator[Running]:
    config = parse_config(config_dict(["../media"]), base_dir=layout["service"])
    async with running_pipeline(nats_server.url, config) as running:
        yield running


async def post(base: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(f"{base}/streams", json=body) as response:
        return response.status, await response.json()


async def test_files_under_the_roots_are_taken(service: Running, layout: dict[str, Path]) -> None:
    assert service.url is not None
    for number, key in enumerate(("beside_config", "in_root")):
        status, body = await post(service.url, {"id": f"ok{number}", "uri": str(layout[key])})
        assert status == 201, body
    relative = {"id": "relative", "uri": "beside.mp4"}  # relative: from the config's folder
    assert (await post(service.url, relative))[0] == 201
    listed = {s["id"] for s in service.runner.control.list()}
    assert {"ok0", "ok1", "relative"} <= listed, listed


async def test_every_path_outside_gets_the_same_refusal(service: Running, layout: dict[str, Path]) -> None:
    assert service.url is not None
    outside = [
        str(layout["outside"]),  # exists
        str(layout["missing_out"]),  # does not
        str(layout["symlink_out"]),  # a link in a root to a file outside it
        str(layout["dotdot_out"]),  # climbs out
        "/etc/hostname",
        "/",
        f"file://{layout['outside']}",
    ]
    answers = [await post(service.url, {"id": "probe", "uri": uri}) for uri in outside]
    assert answers == [(403, {"error": MEDIA_NOT_ALLOWED})] * len(outside), answers
    assert [s for s in service.runner.control.list() if s["id"] == "probe"] == []


async def test_a_file_uri_holding_another_url_is_refused(service: Running) -> None:
    assert service.url is not None
    status, body = await post(service.url, {"id": "sneaky", "uri": "file://http://127.0.0.1:9/x.mp4"})
    assert status == 400
    assert "a file:// URI names a path on this machine, not another URL" in body["error"]


async def test_nats_control_gets_the_same_refusal(nats_server: Any, service: Running, layout: dict[str, Path]) -> None:
    client = await nats.connect(nats_server.url)
    try:
        request = json.dumps({"id": "probe", "uri": str(layout["outside"])}).encode()
        reply = await client.request(control_subject("roots", "add"), request, timeout=GUARD_S)
    finally:
        await client.drain()
    assert json.loads(reply.data) == {"ok": False, "status": 403, "error": MEDIA_NOT_ALLOWED}


def test_a_media_root_that_is_no_folder_is_a_config_error(tmp_path: Path) -> None:
    config = parse_config(config_dict(["nowhere"]), base_dir=tmp_path)
    with pytest.raises(ConfigError) as raised:
        build(config)
    assert raised.value.path == "api.media_roots[0]"
    assert f"not a folder: {tmp_path / 'nowhere'}" in str(raised.value)
