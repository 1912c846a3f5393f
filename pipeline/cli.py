"""``streamgraph run | validate | subscribe | models | doctor``: user errors are one line, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence

from . import __version__
from .config import PipelineConfig, load_config
from .errors import PipelineError
from .logs import LOG_FORMATS, LOG_LEVELS, setup_logging
from .runner import RunSummary
from .sinks.config import JsonlSinkConfig

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

EXIT_CODES_HELP = """\
exit codes:
  0    success; for run: the run ended by itself with every stream of the config file ok, or a
       Ctrl-C/SIGTERM stop drained (streams added at run time never change the exit code)
  1    the pipeline failed (a stage crashed, the bus could not be reached, a model could not load),
       or a run that ended by itself had a stream of the config file fail; subscribe: the server
       went away for longer than --reconnect-s
  2    a config error (one line naming the YAML path), or a command-line usage error
  130  interrupted outside a run's own drain (Ctrl-C while a config loads, or in subscribe)"""

log = logging.getLogger("streamgraph.cli")

EXIT_JOIN_S = 1.0
"""At exit, how long threads still running get to finish before the process leaves without them."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        result: int = args.func(args)
        return result
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ValueError) else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamgraph",
        description="Run audio/video model pipelines, publish results to NATS.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"streamgraph {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=LOG_LEVELS,
        help="level of streamgraph's own logs (default INFO); other libraries' from WARNING up, all of them at DEBUG",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=LOG_FORMATS,
        help="text: 'HH:MM:SS LEVEL logger: message' (default); json: one object per line "
        "(time, level, logger, message, exception)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run a pipeline until its streams end (Ctrl-C drains and stops)",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("config", help="pipeline YAML")
    run.add_argument(
        "--nats-url",
        help="override nats.url: 'embedded', nats://host:port, or a NATS cluster's seeds: nats://n1:4222,nats://n2:4222",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--source",
        action="append",
        metavar="URI",
        help="run the pipeline on this instead of its own source (repeatable, one stream each): "
        "a file, rtsp://..., or an http(s) URL FFmpeg opens",
    )
    run.add_argument(
        "--print",
        action="store_true",
        dest="print_results",
        help="also write each result message to stdout, one JSON object per line (logs, the summary and "
        "--show go to stderr); a jsonl sink on '-'",
    )
    run.add_argument(
        "--show",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="print every stream event and the first N results of each stream, a short line each, "
        "as a subscriber receives them (default 0: none)",
    )
    run.set_defaults(func=_run)

    validate = commands.add_parser("validate", help="check a pipeline YAML; exit 2 with the YAML path at fault")
    validate.add_argument("config")
    validate.set_defaults(func=_validate)

    subscribe = commands.add_parser("subscribe", help="print messages as they arrive")
    subscribe.add_argument("subject", nargs="?", default="streamgraph.>")
    subscribe.add_argument(
        "--nats-url",
        default="nats://127.0.0.1:4222",
        help="nats://[user:password@]host:port or tls://...; the password is never printed",
    )
    subscribe.add_argument("--creds", metavar="FILE", help="a NATS credentials file (JWT accounts)")
    subscribe.add_argument("--tls-ca", metavar="FILE", help="CA certificate(s) to check the server's certificate with")
    subscribe.add_argument("--tls-cert", metavar="FILE", help="a client certificate, for servers that verify clients")
    subscribe.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert")
    subscribe.add_argument("--count", type=non_negative_int, default=0, help="exit after this many messages (0: never)")
    subscribe.add_argument(
        "--reconnect-s",
        type=non_negative_float,
        default=30.0,
        metavar="S",
        help="when the server goes away, try to reconnect for this long, then exit 1 (default 30)",
    )
    subscribe.set_defaults(func=_subscribe)

    top = commands.add_parser("top", help="a live table of the streams on a bus: fps, latency, drops, last found")
    top.add_argument("subject", nargs="?", default="streamgraph.>")
    top.add_argument("--nats-url", default="nats://127.0.0.1:4222", help="as for subscribe")
    top.add_argument(
        "--for", dest="seconds", type=non_negative_float, metavar="S", help="gather S seconds, print the table once"
    )
    top.set_defaults(func=_top)

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


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {text}")
    return value


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
    from .progress import Progress
    from .service import build, run_pipeline
    from .showresults import ResultPrinter
    from .sources import with_sources
    from .top import StreamTable, print_table

    config = load_config(args.config)
    if args.source:
        config = with_sources(config, args.source)
    if args.print_results:
        config = with_printed_results(config)
    graph = build(config, source=args.config)  # every config error surfaces before the bus starts
    # With --print, stdout carries the results and nothing else.
    out = sys.stderr if args.print_results else sys.stdout
    progress = Progress(enabled=not args.no_progress, out=out)
    printer = None
    if args.show:
        printer = ResultPrinter(config.nats.prefix, config.pipeline, per_stream=args.show, write=progress.write)
        streams = StreamTable()  # the table the run ends with, as streamgraph top shows it
        printer.also = streams.handle
    try:
        summary = asyncio.run(
            run_pipeline(
                config,
                nats_url=args.nats_url,
                source=args.config,
                on_started=progress.attach,
                graph=graph,
                on_bus=printer.subscribe if printer is not None else None,
            )
        )
    except PipelineError:
        raise  # main: one line, exit 2 for a config error found on start, 1 for the rest
    except Exception as exc:
        only = _only_pipeline_error(exc)
        if only is not None:
            raise only from None
        # Not a user's mistake but the pipeline itself (a stage crashed): the traceback is the news.
        log.error("pipeline %s failed", config.pipeline, exc_info=exc)
        print(f"error: pipeline {config.pipeline} failed: {_describe(exc)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        progress.close()
    if printer is not None:
        print_table(streams.table(title=f"{config.pipeline}: every stream"), file=out)
    print(_summary_line(summary), file=out)
    for stream_id, error in summary.failed_streams:
        added = " (added at run time)" if summary.stats.stream(stream_id).added_at_run_time else ""
        print(f"stream {stream_id}{added} failed: {error}", file=sys.stderr)
    return run_exit_code(summary)


def with_printed_results(config: PipelineConfig) -> PipelineConfig:
    """``run --print``: the config with a ``jsonl`` sink of its results on stdout."""
    printed = JsonlSinkConfig(type="jsonl", path="-", name="print", events=False)
    return config.model_copy(update={"sinks": [*config.sinks, printed]})


def run_exit_code(summary: RunSummary) -> int:
    """0, unless the run ended by itself (no Ctrl-C/SIGTERM) with a stream of the config file
    failed: 1, as a batch job whose input failed. A stream added at run time (HTTP, NATS) failing
    is that stream's own affair, and a stop asked for is a clean stop: a supervisor restarting the
    service on a non-zero code must not take either for a crash."""
    if summary.interrupted:
        return EXIT_OK
    declared = [sid for sid, _ in summary.failed_streams if not summary.stats.stream(sid).added_at_run_time]
    return EXIT_FAILED if declared else EXIT_OK


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _only_pipeline_error(exc: BaseException) -> PipelineError | None:
    """The one ``PipelineError`` a task group wrapped, if that is all it holds."""
    leaves = _leaves(exc)
    return leaves[0] if len(leaves) == 1 and isinstance(leaves[0], PipelineError) else None


def _describe(exc: BaseException) -> str:
    return "; ".join(f"{type(leaf).__name__}: {leaf}" for leaf in _leaves(exc))


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
        f"{summary.pipeline} {how}: {stats.stream_count} stream(s), {stats.decoded} frames decoded, "
        f"{stats.published} messages published, {stats.dropped} dropped{detail}{consumed}, "
        f"{summary.elapsed_s:.1f} s ({stats.decoded / seconds:.1f} frames decoded/s, "
        f"{stats.published / seconds:.1f} messages/s)"
    )


def _subscribe(args: argparse.Namespace) -> int:
    from .natsconnect import NatsAuth
    from .subscribe import subscribe

    auth = NatsAuth(credentials=args.creds, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key)
    options = {"url": "--nats-url", "credentials": "--creds"}

    def key(name: str) -> str:
        return options.get(name) or f"--{name.replace('_', '-')}"

    run = subscribe(args.nats_url, args.subject, count=args.count, reconnect_s=args.reconnect_s, auth=auth, key=key)
    asyncio.run(run)
    return EXIT_OK


def _top(args: argparse.Namespace) -> int:
    from .top import run_top

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_top(args.nats_url, args.subject, seconds=args.seconds))
    return EXIT_OK


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


def entry() -> None:
    """The ``streamgraph`` command: ``main``, then an exit that no blocked thread can hold up."""
    sys.exit(exit_past_blocked_threads(main()))


def exit_past_blocked_threads(code: int) -> int:
    """``code``; but if a thread is still blocked for good (a call in the shared pool that never
    returns), the process leaves now with ``code`` instead of hanging: Python would join every
    non-daemon thread at exit, after the summary was printed, and a second Ctrl-C would then end it
    with a traceback from ``threading``. Only for the command itself: in-process callers keep
    their threads."""
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    deadline = time.monotonic() + EXIT_JOIN_S
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    blocked = [t.name for t in others if t.is_alive()]
    if not blocked:
        return code
    log.warning("exiting with %d thread(s) still blocked in a call: %s", len(blocked), ", ".join(blocked))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
