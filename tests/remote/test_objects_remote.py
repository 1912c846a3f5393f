"""configs/objects.yaml with its detector on real inference servers, through each remote engine
(Triton over HTTP and gRPC, a KServe model server over v2 HTTP and in TF Serving's REST format,
TorchServe with the tensor handler):
the same objects, boxes and tracks as the model in this process, frame by frame."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from samples.photos import object_samples
from tests.integration.support import ROOT, TrackedObjects, assert_same_objects, objects_by_seq, run_to_end

from .conftest import YOLO_NAME

CONFIG = ROOT / "configs" / "objects.yaml"


def on_server(folder: Path, engine: str, url: str) -> str:
    config = yaml.safe_load(CONFIG.read_text())
    detect = next(stage for stage in config["stages"] if stage["type"] == "infer")
    detect["params"].update(engine=engine, server={"url": url, "model": YOLO_NAME}, batch={"max_size": 4})
    path = folder / f"objects-{engine}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


_IN_PROCESS: dict[str, TrackedObjects] = {}
"""The run with the model in this process, made once for every server's test."""


async def in_process(nats_url: str, env: dict[str, str]) -> TrackedObjects:
    if "person" not in _IN_PROCESS:
        video = str(object_samples()["person"])
        local = await run_to_end(nats_url, str(CONFIG), "objects", ("person",), env=env, args=("--source", video))
        assert local.returncode == 0, local.stderr[-2000:]
        _IN_PROCESS["person"] = objects_by_seq(local.results["person"])
    return _IN_PROCESS["person"]


@pytest.mark.parametrize(
    ("server", "engine", "route", "protocol"),
    [
        ("triton_server", "triton", "http_url", "KServe v2 HTTP"),
        ("triton_server", "triton", "grpc_url", "KServe v2 gRPC"),
        ("kserve_server", "kserve", "http_url", "KServe v2 HTTP"),
        ("kserve_server", "tfserving", "http_url", "TF Serving"),
        ("torchserve", "torchserve", "url", "TorchServe"),
    ],
)
async def test_objects_on_a_server_match_the_model_in_process(
    request: pytest.FixtureRequest,
    nats_server: Any,
    cli_env: dict[str, str],
    tmp_path: Path,
    server: str,
    engine: str,
    route: str,
    protocol: str,
) -> None:
    mine = await in_process(nats_server.url, cli_env)
    url = getattr(request.getfixturevalue(server), route)
    remote = await run_to_end(
        nats_server.url, on_server(tmp_path, engine, url), "objects", ("person",), env=cli_env,
        args=("--source", str(object_samples()["person"])),
    )  # fmt: skip
    assert remote.returncode == 0, remote.stderr[-2000:]
    assert protocol in remote.stderr
    assert_same_objects(mine, objects_by_seq(remote.results["person"]), frames=40, labels={"person", "dog", "horse"})
