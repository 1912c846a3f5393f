"""Object events end to end: two dogs crossing (samples/photos.py) through configs/objects.yaml
with a zone and a line added, a real nats-server with JetStream: each dog enters and leaves, each
crosses the line once, in opposite directions, zones count them, and every crop reference
resolves to a JPEG in the object store."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import nats
import numpy as np
import yaml

from samples.photos import object_samples

from .support import EVENT_VALIDATOR, ROOT, run_to_end

ZONE = [[0, 0], [320, 0], [320, 360], [0, 360]]  # the left half of the 640x360 video
LINE = [[320, 0], [320, 360]]  # down its middle


def config_with_zones(folder: Path) -> str:
    config = yaml.safe_load((ROOT / "configs" / "objects.yaml").read_text())
    events = next(stage for stage in config["stages"] if stage["type"] == "object_events")
    events["params"] = {"zones": {"left": ZONE}, "lines": {"middle": LINE}, "anchor": "center"}
    path = folder / "objects-zones.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


async def test_crossing_dogs_enter_cross_and_leave_with_crops(
    nats_server: Any, cli_env: dict[str, str], tmp_path: Path
) -> None:
    video = object_samples()["crossing"]
    recording = await run_to_end(
        nats_server.url, config_with_zones(tmp_path), "objects", ("crossing",), env=cli_env,
        args=("--source", str(video)),
    )  # fmt: skip
    assert recording.returncode == 0, recording.stderr[-2000:]
    events = [e for e in recording.events["crossing"] if "track_id" in e]
    for event in events:
        EVENT_VALIDATOR.validate(event)
    kinds = Counter(e["event"] for e in events)
    assert kinds["object_entered"] == 2 and kinds["object_left"] == 2, kinds
    tracks = {e["track_id"] for e in events if e["event"] == "object_entered"}
    assert {e["track_id"] for e in events if e["event"] == "object_left"} == tracks

    crossed = [e for e in events if e["event"] == "line_crossed"]
    # The dog going right crosses to the line's left-hand side (it is drawn downwards), the other
    # to its right; each once.
    assert sorted((e["direction"]) for e in crossed) == ["left", "right"], crossed
    assert {e["track_id"] for e in crossed} == tracks
    assert crossed[-1]["counts"] == {"left": 1, "right": 1}

    zone = [(e["event"], e["track_id"]) for e in events if e["event"].startswith("zone_")]
    # One starts in the left half (entered with it), leaves it at the middle; the other enters it there.
    assert Counter(kind for kind, _ in zone) == {"zone_entered": 2, "zone_left": 2}, zone
    assert all(e["counts"].get("dog", 0) <= 2 for e in events if e["event"].startswith("zone_"))

    assert events[-1]["event"] == "object_left"  # before the stream's end, which comes last
    assert recording.events["crossing"][-1]["event"] == "ended"

    without = [e["event"] for e in events if e["event"] in ("object_entered", "object_left") and "crop" not in e]
    assert without == [], (without, recording.stderr[-3000:])
    crops = [e["crop"] for e in events if e["event"] in ("object_entered", "object_left")]
    assert len(crops) == 4 and {c["bucket"] for c in crops} == {"sg-objects-crops"}
    client = await nats.connect(nats_server.url)
    try:
        store = await client.jetstream().object_store("sg-objects-crops")
        for crop in crops:
            data = (await store.get(crop["name"])).data
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and max(image.shape[:2]) <= 256, crop
    finally:
        await client.close()
