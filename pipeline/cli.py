"""``streamgraph run | validate | subscribe | models | doctor``: user errors are one line, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import load_config
from .errors import PipelineError
from .logs import setup_logging
from .runner import Runner, RunSummary

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

log = logging.getLogger("streamgraph.cli")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        result: int = args.func(args)
        return result
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamgraph", description="Run audio/video model pipelines, publish results to NATS."
    )
    parser.add_argument("--version", action="version", version=f"streamgraph {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a pipeline until its streams end (Ctrl-C drains and stops)")
    run.add_argument("config", help="pipeline YAML")
    run.add_argument("--nats-url", help="override nats.url: 'embedded' or nats://host:port")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=_run)

    validate = commands.add_parser("validate", help="check a pipeline YAML; exit 2 with the YAML path at fault")
    validate.add_argument("config")
    validate.set_defaults(func=_validate)

    subscribe = commands.add_parser("subscribe", help="print messages as they arrive")
    subscribe.add_argument("subject", nargs="?", default="streamgraph.>")
    subscribe.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    subscribe.add_argument("--count", type=int, default=0, help="exit after this many messages (0: never)")
    subscribe.set_defaults(func=_subscribe)

    models = commands.add_parser("models", help="model cards and their files")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    pull = model_commands.add_parser("pull", help="fetch and verify model files (all cards if none named)")
    pull.add_argument("names", nargs="*")
    pull.set_defaults(func=_models_pull)
    listing = model_commands.add_parser("list", help="known model cards and whether their files are here")
    listing.set_defaults(func=_models_list)

    doctor = commands.add_parser("doctor", help="what this machine can run (GPU paths, and why not); exits 0")
    doctor.set_defaults(func=_doctor)
    return parser


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import main as doctor_main

    return doctor_main()


def _validate(args: argparse.Namespace) -> int:
    from .service import build

    config = load_config(args.config)
    graph = build(config, source=args.config)
    print(f"{args.config}: ok (pipeline {config.pipeline}, {len(graph.nodes)} stages: {' -> '.join(graph.order)})")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from .service import build, run_pipeline

    config = load_config(args.config)
    graph = build(config, source=args.config)  # every config error surfaces before the bus starts
    progress = _Progress(enabled=not args.no_progress)
    summary = asyncio.run(
        run_pipeline(config, nats_url=args.nats_url, source=args.config, on_started=progress.attach, graph=graph)
    )
    progress.close()
    print(_summary_line(summary))
    for stream_id, error in summary.failed_streams:
        print(f"stream {stream_id} failed: {error}", file=sys.stderr)
    return EXIT_FAILED if summary.failed_streams else EXIT_OK


def _summary_line(summary: RunSummary) -> str:
    stats = summary.stats
    # Frames decoded and messages published apart: an audio window or an ensemble's join makes
    # messages that are not one per frame.
    seconds = summary.elapsed_s if summary.elapsed_s > 0 else float("inf")
    drops = stats.drops_by_reason()
    detail = f" ({', '.join(f'{k}: {v}' for k, v in sorted(drops.items()))})" if drops else ""
    how = "stopped" if summary.interrupted else "done"
    consumed = f", {stats.consumed} consumed" if stats.consumed else ""
    return (
        f"{summary.pipeline} {how}: {len(stats.items())} stream(s), {stats.decoded} frames decoded, "
        f"{stats.published} messages published, {stats.dropped} dropped{detail}{consumed}, "
        f"{summary.elapsed_s:.1f} s ({stats.decoded / seconds:.1f} frames decoded/s, "
        f"{stats.published / seconds:.1f} messages/s)"
    )


class _Progress:
    """A progress bar over published frames, for finite sources; refreshed from the event loop."""

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None
        self._runner: Runner | None = None
        self._task: asyncio.Task[None] | None = None

    def attach(self, runner: Runner) -> None:
        if self._enabled:
            self._runner = runner
            self._task = asyncio.get_running_loop().create_task(self._follow(runner))

    async def _follow(self, runner: Runner) -> None:
        from tqdm import tqdm

        await runner.started.wait()
        self._bar = tqdm(unit="frame", dynamic_ncols=True, file=sys.stderr)
        while True:
            self._update()
            await asyncio.sleep(0.25)

    def _update(self) -> None:
        assert self._runner is not None
        stats = self._runner.stats
        counts = [c.frame_count for _, c in stats.items()]
        self._bar.total = sum(c for c in counts if c) if counts and all(counts) else None
        self._bar.n = stats.published
        self._bar.set_postfix(decoded=stats.decoded, dropped=stats.dropped, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._bar is not None:
            self._update()  # the final count, not the last periodic one
            self._bar.close()


def _subscribe(args: argparse.Namespace) -> int:
    return asyncio.run(_subscribe_async(args.nats_url, args.subject, args.count))


async def _subscribe_async(url: str, subject: str, count: int) -> int:
    import nats

    from .errors import BusError

    try:
        client = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=3, error_cb=_log_nats_error)
    except Exception as exc:
        raise BusError(f"cannot connect to NATS at {url}: {exc or type(exc).__name__}") from None
    received = 0
    done = asyncio.Event()

    async def show(msg: object) -> None:
        nonlocal received
        data = getattr(msg, "data", b"")
        try:
            text = json.dumps(json.loads(data), separators=(",", ":"))
        except ValueError:
            text = data.decode(errors="replace")
        print(f"{getattr(msg, 'subject', '?')} {text}", flush=True)
        received += 1
        if count and received >= count:
            done.set()

    await client.subscribe(subject, cb=show)
    await client.flush()  # the server has the subscription: whatever is published from now on arrives
    print(f"subscribed to {subject} on {url}", file=sys.stderr)
    try:
        await done.wait()
    finally:
        await client.drain()
    return EXIT_OK


async def _log_nats_error(exc: Exception) -> None:
    # nats-py's default callback logs a traceback per failed attempt; one line is enough.
    log.warning("NATS: %s", exc or type(exc).__name__)


def _models_pull(args: argparse.Namespace) -> int:
    from .modelcard import list_cards, load_card
    from .modelstore import model_path

    names = args.names or [path.stem for path in list_cards()]
    for name in names:
        card = load_card(name)
        path = model_path(card)
        print(f"{card.name}: {path} (sha256 ok, license {card.license})")
    return EXIT_OK


def _models_list(args: argparse.Namespace) -> int:
    from .modelcard import list_cards, load_card
    from .modelstore import cached_path

    for path in list_cards():
        card = load_card(str(path))
        here = card.source.path is not None or cached_path(card).is_file()
        print(f"{card.name:20} {card.task:18} {'pulled' if here else 'not pulled':11} {card.license}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
