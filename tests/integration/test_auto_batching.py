"""``max_size: auto`` end to end on a file read as fast as it decodes: the size is chosen by
measurement and the items wait for it before they are prepared (``stages/infer/admission.py``),
yet every frame comes out once, in order, with the boxes batch 1 finds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.integration.support import ROOT, run_to_end


async def test_auto_keeps_every_frame_in_order_with_the_boxes_of_batch_one(
    nats_server: Any, cli_env: dict[str, str], tmp_path: Path
) -> None:
    found = {}
    for label, batch in (("one", {"max_size": 1}), ("auto", {"max_size": "auto", "max_delay_ms": 10})):
        config = yaml.safe_load((ROOT / "configs" / "text-detect.yaml").read_text())
        config["stages"][0]["params"]["path"] = str(ROOT / "samples" / "text.mp4")
        config["stages"] = [stage for stage in config["stages"] if stage["type"] != "prepare"]
        detect = next(stage for stage in config["stages"] if stage["type"] == "infer")
        detect["inputs"] = ["decode"]  # fed frames: infer prepares them, after the admission wait
        detect["params"].update(engine="onnxruntime", batch=batch)
        path = tmp_path / f"text-{label}.yaml"
        path.write_text(yaml.safe_dump(config))
        run = await run_to_end(nats_server.url, str(path), "text-detect", ("sample",), env=cli_env)
        assert run.returncode == 0, run.stderr[-2000:]
        found[label] = [(r["seq"], [b["box"] for b in r["results"]["text"]["boxes"]]) for r in run.results["sample"]]
    mine, theirs = found["auto"], found["one"]
    assert [seq for seq, _ in mine] == list(range(250))  # every frame once, in order
    assert sum(len(boxes) for _, boxes in mine) > 250  # real text found, not empty results
    for (seq, boxes), (_, reference) in zip(mine, theirs, strict=True):
        assert len(boxes) == len(reference), seq
        for a, b in zip(boxes, reference, strict=True):
            assert max(abs(p - q) for p, q in zip(a, b, strict=True)) <= 1.0, f"frame {seq}: {a} vs {b}"
