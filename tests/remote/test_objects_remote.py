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
from tests.integration.support import ROOT, run_to_end

from .conftest import YOLO_NAME

CONFIG = ROOT / "configs" / "objects.yaml"


def on_server(folder: Path, engine: str, url: str) -> str:
    config = yaml.safe_load(CONFIG.read_text())
    detect = next(stage for stage in config["stages"] if stage["type"] == "infer")
    detect["params"].update(engine=engine, server={"url": url, "model": YOLO_NAME}, batch={"max_size": 4})
    path = folder / f"objects-{engine}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def objects_by_seq(results: list[dict[str, Any]]) -> dict[int, list[tuple[str, int, list[float]]]]:
    return {
        r["seq"]: sorted((o["label"], o["track_id"], o["box"]) for o in r["results"]["objects"]["objects"])
        for r in results
    }


_IN_PROCESS: dict[str, dict[int, list[tuple[str, int, list[float]]]]] = {}
"""The run with the model in this process, made once for every server's test."""


async def in_process(nats_url: str, env: dict[str, str]) -> dict[int, list[tuple[str, int, list[float]]]]:
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
    theirs = objects_by_seq(remote.results["person"])
    assert sorted(mine) == sorted(theirs) and len(mine) == 40, remote.stderr[-3000:]
    assert {label for objects in mine.values() for label, _, _ in objects} >= {"person", "dog", "horse"}
    for seq, objects in mine.items():
        assert [(label, track) for label, track, _ in objects] == [(label, track) for label, track, _ in theirs[seq]]
        for (_, _, a), (_, _, b) in zip(objects, theirs[seq], strict=True):
            assert max(abs(p - q) for p, q in zip(a, b, strict=True)) <= 1.0, f"frame {seq}: {a} vs {b}"
