"""Run one pipeline config end to end: connect the bus, build the graph, run it, close down.

The composition root: the one runtime module that starts the HTTP server (``pipeline.server``),
when the config has an ``api`` section.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable, Sequence

from .bus import Bus
from .cluster.member import Membership, join
from .config import PipelineConfig
from .control_nats import NatsControl
from .errors import ConfigError
from .graph import Graph, build_graph
from .natsconnect import NatsAuth, nats_target
from .runner import Runner, RunSummary
from .server import ApiServer, build_app
from .sinks import Sink, Sinks
from .tls import api_server_context

log = logging.getLogger("streamgraph")


def load_builtin_stages() -> None:
    """Register the built-in stage types (the runtime itself never imports ``stages``)."""
    importlib.import_module("stages")


def build(config: PipelineConfig, *, source: str | None = None) -> Graph:
    load_builtin_stages()
    graph = build_graph(config, source=source)
    try:
        check_connection_files(config)
        config.media_roots()  # a missing folder is a config error before anything starts
        Sinks.from_config(config.sinks, config.base_dir)  # two sinks of one name
    except ConfigError as exc:
        raise ConfigError(exc.path, exc.message, source=source) from None
    return graph


def check_connection_files(config: PipelineConfig) -> ssl.SSLContext | None:
    """The files of ``nats.credentials``, ``nats.tls_*`` and ``api.tls_*`` checked (and loaded),
    so ``validate`` and the start of a run name a missing one; returns the API's TLS context."""
    if config.nats.url != "embedded":
        nats_target(config.nats.url, NatsAuth.of(config.nats), base_dir=config.base_dir)
    return api_server_context(config.api, config.base_dir) if config.api is not None else None


async def run_pipeline(
    config: PipelineConfig,
    *,
    nats_url: str | None = None,
    source: str | None = None,
    on_started: Callable[[Runner], None] | None = None,
    on_api: Callable[[ApiServer], None] | None = None,
    handle_signals: bool = True,
    graph: Graph | None = None,
    on_bus: Callable[[Bus], Awaitable[None]] | None = None,
    extra_sinks: Sequence[Sink] = (),
) -> RunSummary:
    """Run until every finite stream ends or SIGINT/SIGTERM asks to stop (then drain). ``graph``:
    the config's, built already (the CLI builds it first, so config errors come before the bus).
    ``on_bus``: awaited once the bus is connected, before any stage starts (``run --show``
    subscribes there, so it sees every message the pipeline publishes). ``extra_sinks``: sinks
    besides the config's (the Python API's)."""
    graph = graph if graph is not None else build(config, source=source)
    api_tls = check_connection_files(config)
    bus = await Bus.connect(config.nats, pipeline=config.pipeline, url=nats_url, base_dir=config.base_dir)
    log.info("pipeline %s publishing to %s (prefix %s)", config.pipeline, bus.url, config.nats.prefix)
    sinks = Sinks([*Sinks.from_config(config.sinks, config.base_dir), *extra_sinks])
    runner = Runner(
        graph,
        base_dir=config.base_dir,
        bus=bus,
        sinks=sinks,
        threads=config.runtime.threads,
        drain_timeout_s=config.runtime.drain_timeout_s,
        stall_s=config.runtime.stall_s,
        media_roots=config.media_roots(),
    )
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()

    membership: Membership | None = None

    def stop() -> None:
        if runner.stopping:  # a second signal: do not wait for the outbox either
            bus.stop_flushing()
        if membership is not None:
            membership.stop()  # claim nothing more while the streams drain
        runner.request_stop()

    for sig in signals:
        loop.add_signal_handler(sig, stop)
    api: ApiServer | None = None
    queue = f"sg-{config.pipeline}-{config.cluster.name}" if config.cluster is not None else ""
    control = NatsControl(bus, runner, token=config.api.token if config.api is not None else "", queue=queue)
    try:
        await sinks.start()
        if on_bus is not None:
            await on_bus(bus)
        if config.cluster is not None:
            membership = await join(config.cluster, bus, runner)
        await control.start()
        if config.api is not None:
            app = build_app(runner, bus=bus, token=config.api.token)
            api = ApiServer(app, config.api.host, config.api.port, ssl_context=api_tls)
            await api.start()
            if on_api is not None:
                on_api(api)
        if on_started is not None:
            on_started(runner)
        summary = await runner.run()
        if membership is not None:
            await membership.leave()  # drained: hand the streams over at once
        return summary
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        if membership is not None:
            membership.worker.stop()  # the run failed: beat and renew no more
        if api is not None:
            await api.stop()
        await control.close()
        await sinks.close(config.nats.outbox.flush_timeout_s)
        await bus.close()
