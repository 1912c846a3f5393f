"""configs/objects.yaml with its detector on a real Triton (KServe v2 HTTP, the engine interface's
remote side): the same objects, boxes and tracks as the model in this process, frame by frame."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from samples.photos import object_samples
from tests.integration.support import ROOT, run_to_end

from .conftest import YOLO_NAME

CONFIG = ROOT / "configs" / "objects.yaml"


def on_triton(folder: Path, url: str) -> str:
    config = yaml.safe_load(CONFIG.read_text())
    detect = next(stage for stage in config["stages"] if stage["type"] == "infer")
    detect["params"].update(engine="triton", server={"url": url, "model": YOLO_NAME}, batch={"max_size": 4})
    path = folder / "objects-triton.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def objects_by_seq(results: list[dict[str, Any]]) -> dict[int, list[tuple[str, int, list[float]]]]:
    return {
        r["seq"]: sorted((o["label"], o["track_id"], o["box"]) for o in r["results"]["objects"]["objects"])
        for r in results
    }


async def test_objects_on_triton_match_the_model_in_process(
    nats_server: Any, triton_server: Any, cli_env: dict[str, str], tmp_path: Path
) -> None:
    video = str(object_samples()["person"])
    local = await run_to_end(
        nats_server.url, str(CONFIG), "objects", ("person",), env=cli_env, args=("--source", video)
    )
    assert local.returncode == 0, local.stderr[-2000:]
    remote = await run_to_end(
        nats_server.url, on_triton(tmp_path, triton_server.http_url), "objects", ("person",), env=cli_env,
        args=("--source", video),
    )  # fmt: skip
    assert remote.returncode == 0, remote.stderr[-2000:]
    assert "KServe v2 HTTP" in remote.stderr
    mine, theirs = objects_by_seq(local.results["person"]), objects_by_seq(remote.results["person"])
    assert sorted(mine) == sorted(theirs) and len(mine) == 40
    assert {label for objects in mine.values() for label, _, _ in objects} >= {"person", "dog", "horse"}
    for seq, objects in mine.items():
        assert [(label, track) for label, track, _ in objects] == [(label, track) for label, track, _ in theirs[seq]]
        for (_, _, a), (_, _, b) in zip(objects, theirs[seq], strict=True):
            assert max(abs(p - q) for p, q in zip(a, b, strict=True)) <= 1.0, f"frame {seq}: {a} vs {b}"
