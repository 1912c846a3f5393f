"""The object detector (YOLOv4-tiny) through streamgraph against the loop a user writes.

Run it from the repository root (after ``make samples``):

    .venv/bin/python bench/objects.py [--streams 1,4,16] [--batches 1,4,8] [--markdown]

First ``session.run`` alone at batch 1, 4 and 8 (ms per frame: what batching can gain). Then, for
each number of concurrent streams N (N file streams of ``samples/dog.mp4``, 40 frames each, at
``rate: max``), one after another on one embedded nats-server:

* ``baseline``: PyAV decode, the same stretch to 416x416, ``InferenceSession.run`` per frame, the
  same head decoding and NMS (``stages.objects.yolo``), a JSON publish; one stream after another
  (no tracking: the hand-written loop a user starts from);
* ``sg batch B`` for each B in ``--batches``: decode -> infer(yolov4-tiny, ``batch: {max_size:
  B, max_delay_ms: 10}``) -> yolo -> track -> publish, N streams side by side.

Throughput is frames received over the time from the first frame's capture to the last receipt;
"per stream" divides it by N (each stream's share). Latency is capture to receipt by a subscriber
on its own thread. It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # samples.photos: the sample videos

import av
import nats
import numpy as np
from batching import Collector, Outcome, cpu_model, load1, make_session, markdown_table, model_alone, print_table
from batching import summarize_messages as summarize

from pipeline.bus import NatsServer
from pipeline.config import parse_config
from pipeline.imaging import prepare_image
from pipeline.modelcard import load_model_card
from pipeline.modelstore import labels_path
from pipeline.runner import Runner
from pipeline.service import run_pipeline
from samples.photos import object_samples
from stages.infer import Infer
from stages.objects.yolo import decode, nms

ROOT = Path(__file__).resolve().parent.parent
MODEL = "yolov4-tiny"
PREFIX = "bench"


def pipeline_dict(name: str, clip: Path, streams: int, batch: int, nats_url: str, threads: int) -> dict[str, Any]:
    sources = [
        {"name": f"v{i}", "type": "file", "params": {"path": str(clip), "id": f"s{i}", "rate": "max"}}
        for i in range(streams)
    ]
    return {
        "pipeline": name,
        "nats": {"url": nats_url, "prefix": PREFIX},
        "runtime": {"threads": threads},
        "stages": [
            *sources,
            {"name": "decode", "type": "decode", "inputs": [s["name"] for s in sources]},
            {
                "name": "det",
                "type": "infer",
                "inputs": ["decode"],
                # ONNX Runtime, as the baseline runs: the comparison is of the pipeline, not the engine.
                "params": {"model": MODEL, "engine": "onnxruntime", "batch": {"max_size": batch, "max_delay_ms": 10}},
            },
            {"name": "objects", "type": "yolo", "inputs": ["det"], "params": {"model": MODEL, "threshold": 0.1}},
            {"name": "tracks", "type": "track", "inputs": ["objects"]},
            {"name": "publish", "type": "publish", "inputs": ["tracks"]},
        ],
    }


async def run_streamgraph(
    batch: int, clip: Path, streams: int, nats_url: str, collector: Collector, threads: int
) -> Outcome:
    name = f"objects-b{batch}-n{streams}"
    config = parse_config(pipeline_dict(name, clip, streams, batch, nats_url, threads), base_dir=ROOT)
    runners: list[Runner] = []
    collector.begin(f"{PREFIX}.{name}.*")
    summary = await run_pipeline(config, nats_url=nats_url, on_started=runners.append, handle_signals=False)
    received = collector.finish(summary.stats.published)
    messages = summarize(received)
    stage = runners[0].graph.nodes["det"].stage
    batcher = stage.batcher if isinstance(stage, Infer) else None
    return Outcome(
        contender=f"sg batch {batch}",
        streams=streams,
        window_s=messages.last_receipt - messages.first_capture if received else 0.0,
        messages=messages,
        mean_batch=batcher.batched_items / batcher.batches if batcher is not None and batcher.batches else None,
        load1=load1(),
        decoded=summary.stats.decoded,
        dropped=summary.stats.dropped,
    )


async def run_baseline(clip: Path, streams: int, nats_url: str, collector: Collector, threads: int) -> Outcome:
    """Decode, stretch, run, decode the heads, NMS, publish: one stream after another."""
    card = load_model_card(MODEL, ROOT)
    assert card.preprocess is not None and card.yolo is not None
    spec, yolo = card.preprocess, card.yolo
    size = (spec.size[0], spec.size[1])
    labels = labels_path(card).read_text().splitlines()
    session = make_session(card, threads)
    input_name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    name = f"objects-baseline-n{streams}"
    nc = await nats.connect(nats_url)
    collector.begin(f"{PREFIX}.{name}.*")
    sent = 0
    try:
        for index in range(streams):
            with av.open(str(clip)) as container:
                for seq, frame in enumerate(container.decode(video=0)):
                    captured = time.time()
                    image = frame.to_ndarray(format="bgr24")
                    tensor = prepare_image(image, size, spec.resize, spec)
                    began = time.perf_counter()
                    heads = session.run(outputs, {input_name: tensor.data[None]})
                    infer_ms = (time.perf_counter() - began) * 1000.0
                    found = nms(decode({n: h[0] for n, h in zip(outputs, heads, strict=True)}, yolo, size, 0.25), 0.45)
                    scale = np.array([image.shape[1], image.shape[0]] * 2) / np.array([size[1], size[0]] * 2)
                    objects = [
                        {
                            "label": labels[c],
                            "score": round(float(s), 4),
                            "box": [round(float(v), 1) for v in b * size[1] * scale],
                        }
                        for c, s, b in zip(found.classes, found.scores, found.boxes, strict=True)
                    ]
                    message = {
                        "stream_id": f"s{index}",
                        "seq": seq,
                        "capture_time": captured,
                        "results": {"objects": {"type": "object_detection", "objects": objects}},
                        "latency_ms": {"infer": infer_ms},
                    }
                    await nc.publish(f"{PREFIX}.{name}.s{index}", json.dumps(message).encode())
                    await asyncio.sleep(0)
                    sent += 1
        await nc.flush()
    finally:
        await nc.close()
    received = collector.finish(sent)
    messages = summarize(received)
    return Outcome(
        contender="baseline",
        streams=streams,
        window_s=messages.last_receipt - messages.first_capture if received else 0.0,
        messages=messages,
        mean_batch=None,
        load1=load1(),
        decoded=sent,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--streams", default="1,4,16", help="numbers of concurrent streams (default 1,4,16)")
    parser.add_argument("--batches", default="1,4,8", help="streamgraph's batch max_size values (default 1,4,8)")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads and runtime.threads")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    return parser.parse_args(argv)


async def bench(args: argparse.Namespace, server: NatsServer, collector: Collector) -> list[Outcome]:
    clip = object_samples()["dog"]
    rows: list[Outcome] = []
    for streams in (int(n) for n in args.streams.split(",")):
        rows.append(await run_baseline(clip, streams, server.url, collector, args.threads))
        for batch in (int(b) for b in args.batches.split(",")):
            rows.append(await run_streamgraph(batch, clip, streams, server.url, collector, args.threads))
        print(f"{streams} streams done", file=sys.stderr)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    card = load_model_card(MODEL, ROOT)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; load1 {load1():.2f}")
    alone = model_alone(card, args.threads, [1, 4, 8], repeats=10)
    print("session.run alone, ms per frame by batch size: " + ", ".join(f"{b}: {ms:.1f}" for b, ms in alone.items()))
    with NatsServer() as server:
        collector = Collector(server.url)
        collector.start()
        try:
            rows = asyncio.run(bench(args, server, collector))
        finally:
            collector.stop()
    print_table(rows)
    print(
        "per stream (frames/s each): " + ", ".join(f"{r.contender} x{r.streams}: {r.fps / r.streams:.1f}" for r in rows)
    )
    if args.markdown:
        print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
