"""Engines on the CPU: ONNX Runtime against OpenVINO at f32, bf16 and int8, on every shipped model.

Run it from the repository root:

    .venv/bin/python bench/engines.py [--batches 1,4,8] [--runs 10] [--threads 0] [--markdown]

One run, the same inputs for every contender:

1. **The models alone.** Each shipped model at batch 1, 4 and 8: ms a batch and frames/s (the
   median of ``--runs`` timed runs after two untimed), for ONNX Runtime on the CPU and OpenVINO at
   each precision this CPU has. The inputs are real frames where the card names calibration
   media (the held-out half of them: never the frames int8 was quantized on), random data of the
   card's shape elsewhere. ``accuracy`` is the task's measure against f32 (mAP@0.5 in points,
   ``pipeline.accuracy``): OpenVINO f32 against ONNX Runtime, bf16 and int8 against OpenVINO f32
   (the accuracy gate's verdict); ``-`` where the task has no measure or the card no frames.
2. **The demo end to end.** ``configs/text-detect.yaml``'s graph (file -> decode -> prepare ->
   infer(pp-ocrv4-det) -> text_detection -> publish, ``rate: max``, batch 1) on the sample, one
   stream, with each engine, against the loop a user writes (PyAV + ONNX Runtime + the same post-
   processing and publish: ``bench/batching.py``'s baseline).
3. **Threads** (``--threads-grid``): the demo on OpenVINO at each ``runtime.threads`` x engine
   ``intra_op_threads``, to show where the cores are oversubscribed.

It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # stages, the project's packages

from batching import (
    SAMPLE,
    Collector,
    Outcome,
    Setup,
    cpu_model,
    ensure_sample,
    load1,
    run_baseline,
    run_streamgraph,
)

import stages  # noqa: F401  (registers the task measures)
from pipeline.accuracy import agreement, box_reader
from pipeline.bus import NatsServer
from pipeline.engines.onnxruntime import OnnxRuntimeEngine, OnnxRuntimeOptions
from pipeline.engines.openvino import OpenVinoEngine, OpenVinoOptions
from pipeline.engines.warmup import constant_feeds
from pipeline.errors import ModelError
from pipeline.modelcard import ModelCard, load_card
from pipeline.modelstore import model_path
from pipeline.precision import check_precision
from pipeline.precision.calibration import calibration_set

MODELS = ("pp-ocrv4-det", "yolov4-tiny", "pp-ocrv4-rec", "silero-vad")
AUDIO_WINDOW = 512
"""silero-vad's window at 16 kHz (the ``samples`` axis its card leaves open)."""


@dataclass
class ModelRow:
    model: str
    contender: str
    ms: dict[int, float]
    """Median ms a batch, by batch size."""
    accuracy: str


def inputs_for(card: ModelCard, batch: int, held: list[np.ndarray] | None) -> dict[str, np.ndarray]:
    """A batch for ``card``: held-out real frames where there are some, else random data of its shape."""
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = constant_feeds(card)
    size = card.preprocess.size if card.preprocess is not None else [0, 0]
    named = {"batch": batch, "height": size[0], "width": size[1], "samples": AUDIO_WINDOW}
    states = {state.input for state in card.state}
    for spec in card.inputs:
        if spec.name in feeds:
            continue
        shape = [dim if isinstance(dim, int) else named[dim] for dim in spec.shape]
        if spec.name in states:
            feeds[spec.name] = np.zeros(shape, spec.dtype)
        elif held:
            feeds[spec.name] = np.concatenate([held[i % len(held)] for i in range(batch)])
        else:
            feeds[spec.name] = rng.uniform(-1, 1, shape).astype(spec.dtype)
    return feeds


def median_ms(run: Any, feeds: dict[str, np.ndarray], runs: int) -> float:
    run(feeds)
    run(feeds)
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        run(feeds)
        times.append((time.perf_counter() - began) * 1000.0)
    return statistics.median(times)


def held_outputs(run: Any, card: ModelCard, held: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    name = card.data_inputs[0].name
    return [{k: np.asarray(v)[0] for k, v in run({name: frame}).items()} for frame in held]


def bench_model(name: str, batches: list[int], runs: int, threads: int) -> list[ModelRow]:
    card = load_card(name)
    try:
        held: list[np.ndarray] | None = calibration_set(card).held
    except ModelError:
        held = None
    measured = held is not None and _has_measure(card)
    onnxruntime = OnnxRuntimeEngine(
        card, OnnxRuntimeOptions(providers=["CPUExecutionProvider"], intra_op_threads=threads)
    )
    try:
        openvino = OpenVinoEngine(card, OpenVinoOptions(intra_op_threads=threads))
    except ModelError as exc:  # silero-vad: OpenVINO cannot convert its If branches
        print(f"  {name} openvino: {exc}", flush=True)
        row = ModelRow(
            name,
            "onnxruntime",
            {b: median_ms(onnxruntime.infer, inputs_for(card, b, held), runs) for b in batches},
            "-",
        )
        return [row, ModelRow(name, "openvino (cannot load it)", {}, str(exc).rsplit(": ", 1)[-1])]
    reference = held_outputs(onnxruntime.infer, card, held) if measured and held else None
    contenders: list[tuple[str, Any, str]] = [("onnxruntime", onnxruntime, "100 (reference)" if measured else "-")]
    f32_accuracy = (
        f"{agreement(card, reference, held_outputs(openvino.infer, card, held)):.1f}" if reference and held else "-"
    )
    contenders.append(("openvino f32", openvino, f32_accuracy))
    for precision in ("bf16", "int8"):
        problem = openvino.unsupported(precision)
        if problem is not None:
            print(f"  {name} {precision}: {problem}", flush=True)
            continue
        try:
            verdict, model_file = check_precision(openvino, precision, model_path(card))
            accuracy = f"{verdict.score:.1f} ({'passes' if verdict.passed else 'fails'} the gate)"
        except ModelError as exc:
            if precision == "int8":
                print(f"  {name} int8: {exc}", flush=True)
                continue
            model_file, accuracy = model_path(card), "-"  # bf16 runs any model; only the check needs frames
        contenders.append((f"openvino {precision}", openvino.compile(model_file, precision), accuracy))
    rows = []
    for label, engine, accuracy in contenders:
        ms = {}
        for batch in batches:
            feeds = inputs_for(card, batch, held)
            if hasattr(engine, "settle"):
                engine.settle(feeds)
            ms[batch] = median_ms(engine.infer, feeds, runs)
        rows.append(ModelRow(name, label, ms, accuracy))
        print(f"  {name} {label}: " + ", ".join(f"b{b} {v:.1f} ms" for b, v in ms.items()), flush=True)
    return rows


def _has_measure(card: ModelCard) -> bool:
    try:
        box_reader(card)
    except ModelError:
        return False
    return True


def print_models(rows: list[ModelRow], batches: list[int], markdown: bool) -> None:
    head = (
        ["model", "engine"]
        + [f"b{b} ms" for b in batches]
        + [f"b{b} frames/s" for b in batches]
        + ["vs ORT b1", "accuracy vs f32"]
    )
    ort_b1 = {row.model: row.ms[batches[0]] for row in rows if row.contender == "onnxruntime"}
    lines = []
    for row in rows:
        cells = [row.model, row.contender]
        cells += [f"{row.ms[b]:.1f}" if b in row.ms else "-" for b in batches]
        cells += [f"{b * 1000.0 / row.ms[b]:.1f}" if b in row.ms else "-" for b in batches]
        ratio = f"{ort_b1[row.model] / row.ms[batches[0]]:.2f}x" if batches[0] in row.ms else "-"
        cells += [ratio, row.accuracy]
        lines.append(cells)
    _print_table(head, lines, markdown)


def _print_table(head: list[str], lines: list[list[str]], markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("| " + " | ".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + " |")
        for cells in lines:
            print("| " + " | ".join(cells) + " |")
        return
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for cells in lines:
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))


DEMO_ENGINES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("sg onnxruntime", {"engine": "onnxruntime"}),
    ("sg openvino f32", {"engine": "openvino"}),
    ("sg openvino int8", {"engine": "openvino", "precision": "int8"}),
    ("sg openvino auto", {"engine": "openvino", "precision": "auto"}),
    ("sg engine auto", {"engine": "auto"}),
)


async def bench_demo(args: argparse.Namespace, server: NatsServer, collector: Collector) -> list[Outcome]:
    rows: list[Outcome] = []
    for repeat in range(args.repeat):
        setup = Setup(SAMPLE, server.url, 4, args.threads, 0.0)
        rows.append(await run_baseline(f"baseline-{repeat}", setup, collector, 1))
        for label, engine in DEMO_ENGINES:
            engine_setup = Setup(SAMPLE, server.url, 4, args.threads, 0.0, engine=tuple(engine.items()))
            name = f"{label.replace(' ', '-')}-{repeat}"
            try:
                rows.append(await run_streamgraph(label, name, engine_setup, collector, 1, {"max_size": 1}))
            except ModelError as exc:  # a precision that fails its gate refuses to start
                print(f"  {label}: refused: {exc}", flush=True)
                continue
            print(f"  {label}: {rows[-1].fps:.1f} frames/s (load {rows[-1].load1:.2f})", flush=True)
    best: dict[str, Outcome] = {}
    for row in rows:
        if row.contender not in best or row.fps > best[row.contender].fps:
            best[row.contender] = row
    return list(best.values())


def print_demo(rows: list[Outcome], markdown: bool) -> None:
    by = {row.contender: row for row in rows}
    ort_fps = by["sg onnxruntime"].fps if "sg onnxruntime" in by else float("nan")
    hand = by["baseline"].fps
    head = ["contender", "frames", "frames/s", "p50 ms", "infer ms", "vs sg onnxruntime", "vs hand loop"]
    lines = [
        [
            "hand loop (ORT)" if row.contender == "baseline" else row.contender,
            str(row.frames),
            f"{row.fps:.1f}",
            f"{row.percentile(50):.0f}",
            f"{row.infer_ms:.1f}",
            f"{row.fps / ort_fps:.2f}x",
            f"{row.fps / hand:.2f}x",
        ]
        for row in rows
    ]
    _print_table(head, lines, markdown)


async def bench_threads(args: argparse.Namespace, server: NatsServer, collector: Collector) -> None:
    print("\nthreads: the demo on OpenVINO f32, runtime.threads x intra_op_threads (0: every core)")
    head = ["runtime.threads", "intra_op_threads", "frames/s", "infer ms", "load1"]
    lines = []
    for threads in (1, 2, 4):
        for intra in (1, 2, 0):
            setup = Setup(SAMPLE, server.url, threads, intra, 0.0, engine=(("engine", "openvino"),))
            row = await run_streamgraph("grid", f"grid-{threads}-{intra}", setup, collector, 1, {"max_size": 1})
            lines.append([str(threads), str(intra), f"{row.fps:.1f}", f"{row.infer_ms:.1f}", f"{row.load1:.2f}"])
            print(f"  {threads} x {intra}: {row.fps:.1f} frames/s", flush=True)
    _print_table(head, lines, args.markdown)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--batches", default="1,4,8", help="batch sizes of the models-alone table (default 1,4,8)")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per figure (default 10)")
    parser.add_argument("--threads", type=int, default=0, help="engine intra_op_threads (default 0: every core)")
    parser.add_argument("--models", default=",".join(MODELS), help="models of the first table")
    parser.add_argument("--repeat", type=int, default=1, help="demo runs per contender; the fastest is kept")
    parser.add_argument("--skip-demo", action="store_true", help="the models alone only")
    parser.add_argument("--threads-grid", action="store_true", help="also the runtime.threads x intra_op_threads grid")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_sample()
    import onnxruntime
    import openvino

    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, ONNX Runtime "
        f"{onnxruntime.__version__}, OpenVINO {openvino.get_version().split('-')[0]}; load1 {load1():.2f}"
    )
    batches = [int(b) for b in args.batches.split(",")]
    rows: list[ModelRow] = []
    for name in args.models.split(","):
        rows.extend(bench_model(name, batches, args.runs, args.threads))
    print()
    print_models(rows, batches, args.markdown)
    if args.skip_demo:
        return 0
    with NatsServer() as server:
        collector = Collector(server.url)
        collector.start()
        try:
            demo = asyncio.run(bench_demo(args, server, collector))
            print("\nthe demo end to end (configs/text-detect.yaml's graph, one stream, batch 1)")
            print_demo(demo, args.markdown)
            if args.threads_grid:
                asyncio.run(bench_threads(args, server, collector))
        finally:
            collector.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
