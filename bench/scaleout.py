"""Scale-out: N worker processes of one cluster and M looping streams on this machine. How fast a
dead worker's streams fail over and a leaving worker's are handed off, how many streams a joining
worker moves, and how much key-value traffic the control plane makes per stream.

Run it from the repository root:

    .venv/bin/python bench/scaleout.py [--workers 3] [--streams 12] [--repeats 3] [--leases 3,10]

One nats-server with JetStream (``pipeline.bus.NatsServer``). For each lease (``--leases``) a new
cluster (its own ``cluster.name`` and subject prefix): ``--workers`` processes
``python -m pipeline.cli run <config> --nats-url ...``, each with a ``cluster:`` section and its
own HTTP API, all running streams -> decode -> publish (``--no-decode``: streams -> publish, the
packets published as they are read), and ``--streams`` streams of a tiny clip (96x64 H.264,
``--fps`` frames/s, 2 s, looped at ``rate: native``) added through one worker's ``POST /streams``.
A NATS subscriber in the bench receives every result (each carries its ``owner`` and ``epoch``) and
every ``owner_changed`` event, stamped with the time it arrived. Then, in this order:

1. **key-value traffic**: a quiet window (``--kv-window-s``): the three buckets' streams
   (``KV_sg-<name>-catalog``/``-workers``/``-owners``) are read with ``js.stream_info`` before and
   after: their ``last_seq`` deltas are the writes (the buckets keep one revision per key, so the
   message counts stay flat). Reads (gets) are not counted by the server per stream; they are
   computed from the worker's algorithm: every tick each worker lists the keys of the catalog, the
   owners and the workers (3 listings, a stream info with a subjects filter each) and gets every
   key it listed (M + M + N gets), so reads/s = N x (3 + 2 M + N) / tick. The tick used is the one
   measured in the window (the owners bucket takes M renewals per tick: tick = M x window / owners
   writes), not the configured lease_s / 4. The account's JetStream API request count
   (``js.account_info``) is shown beside it: the listings are API requests, direct gets are not,
   so it should come to 3 per worker tick (plus the bench's own few); another figure means the
   formula no longer describes the code. The consumers on the buckets' streams are shown at the
   end of the window and of each lease's run (the listings create none). A window with an
   ``owner_changed`` in it is taken again (at most 3 windows);
2. **failover**, ``--repeats`` times: SIGKILL the oldest worker; the time from the kill until each
   of its streams has a result from another worker (per stream, and until the last of them); a
   new worker is then started so the cluster is back to N;
3. **graceful handoff**, ``--repeats`` times: the same with SIGTERM (the worker drains, releases
   its leases and exits);
4. **rebalance churn**: one more worker (N -> N+1): how many streams changed owner
   (``owner_changed`` events) against the fewest that balance the cluster (the new worker's fair
   share, floor(M / (N+1))), and whether any stream moved twice. The restarts of 2 and 3 are joins
   too (N-1 -> N) and are counted the same way.

After every stop and every join the bench waits until the cluster is balanced (every stream owned
by a live worker, running, its latest result from the owner and epoch ``GET /streams`` names, no
worker more than one stream above another) and quiet (no ``owner_changed`` for two ticks).
``--verbose`` prints every stop, start and ``owner_changed`` event as it happens.
It prints figures and asserts nothing on them; ``--estimate-streams``/``--estimate-workers``
(1000/50) puts the measured tick into the formula at that size. Defaults take 5-6 minutes on
two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.clips: the tests' clip writer

import aiohttp
from batching import cpu_model
from scaleout_cluster import BenchError, Cluster, say, tiny_clip
from scaleout_figures import (
    API_PER_WORKER_TICK,
    Join,
    KvRates,
    Outage,
    print_estimate,
    print_joins,
    print_kv,
    print_outages,
)

from pipeline.bus import NatsServer, nats_server_binary

KV_TRIES = 3
"""Key-value windows taken at most, until one has no ``owner_changed`` in it."""


# --------------------------------------------------------------------------- the run


@dataclass
class Figures:
    outages: dict[float, list[Outage]] = field(default_factory=dict)
    joins: dict[float, list[Join]] = field(default_factory=dict)
    kv: dict[float, KvRates] = field(default_factory=dict)
    fencing: dict[float, int] = field(default_factory=dict)
    results: dict[float, int] = field(default_factory=dict)
    consumers: dict[float, tuple[float, dict[str, int]]] = field(default_factory=dict)
    """Lease -> (seconds since its cluster started, consumers on each bucket's stream) at its end."""


async def one_lease(
    args: argparse.Namespace, lease_s: float, nats_url: str, folder: Path, clip: Path, figures: Figures
) -> None:
    began = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        cluster = Cluster(args, lease_s, nats_url, folder, clip, http)
        outages = figures.outages.setdefault(lease_s, [])
        joins = figures.joins.setdefault(lease_s, [])
        try:
            await cluster.start()
            say(f"lease {lease_s:g} s: {len(cluster.workers)} workers run {args.streams} streams; KV window")
            for _ in range(KV_TRIES):  # a window with a move in it (a late rebalance) is taken again
                figures.kv[lease_s] = await cluster.kv_window()
                if not figures.kv[lease_s].moves:
                    break
                await cluster.settle("the cluster settling after a move in the key-value window")
            for sig in (signal.SIGKILL, signal.SIGTERM):
                for rep in range(args.repeats):
                    outage = await cluster.stop_one(sig)
                    outages.append(outage)
                    joins.append(await cluster.join("restart"))
                    say(
                        f"lease {lease_s:g} s: {sig.name} {rep + 1}/{args.repeats}: {outage.streams} streams "
                        f"elsewhere after {outage.all_s:.2f} s; restarted, settled in {joins[-1].settle_s:.1f} s"
                    )
            joins.append(await cluster.join("extra"))
            say(f"lease {lease_s:g} s: extra worker: {joins[-1].moved} streams moved (ideal {joins[-1].ideal})")
        except BenchError as exc:
            say(f"lease {lease_s:g} s: stopped early: {exc}")
            for worker in cluster.workers + cluster.stopped:
                tail = worker.log.read_text(errors="replace").splitlines()[-5:] if worker.log.exists() else []
                say(f"  {worker.id} ({worker.log.name}): " + " | ".join(tail))
        finally:
            with contextlib.suppress(Exception):
                figures.consumers[lease_s] = (time.monotonic() - began, await cluster.consumers())
            figures.fencing[lease_s] = cluster.fencing_violations()
            figures.results[lease_s] = cluster.received.results
            await cluster.close()
    say(f"lease {lease_s:g} s: {time.monotonic() - began:.0f} s")


def nats_server_version() -> str:
    try:
        return subprocess.run([nats_server_binary(), "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "nats-server (version unknown)"


def print_figures(args: argparse.Namespace, figures: Figures) -> None:
    print(
        f"\nstreams moved by a stop ({args.repeats} stops of each kind per lease; n: stops, or streams for per stream):"
    )
    print_outages(figures.outages, markdown=args.markdown)
    print("joins (extra: N -> N+1; restart: N-1 -> N after each stop):")
    print_joins(figures.joins, markdown=args.markdown)
    if figures.kv:
        print(
            "key-value traffic in a quiet window: writes are the buckets' sequence deltas; reads are "
            "estimated as N x (3 listings + 2 M + N gets) per measured tick:"
        )
        print_kv(figures.kv, markdown=args.markdown)
        print_estimate(figures.kv, args.estimate_workers, args.estimate_streams, markdown=args.markdown)
    for lease_s, (after_s, consumers) in figures.consumers.items():
        print(
            f"consumers on the buckets' streams (catalog/workers/owners) when lease {lease_s:g} s's run ended, "
            f"{after_s:.0f} s after it began: {'/'.join(str(n) for n in consumers.values())}"
        )
    for lease_s, kv in figures.kv.items():
        per_tick = kv.api_requests / kv.worker_ticks
        if abs(per_tick - API_PER_WORKER_TICK) > 1.0:
            print(
                f"note: lease {lease_s:g} s: {per_tick:.1f} JetStream API requests per worker tick, not "
                f"{API_PER_WORKER_TICK}: the reads formula no longer describes how the workers read the buckets"
            )
    fencing = sum(figures.fencing.values())
    print(
        f"results received: {sum(figures.results.values())}; (stream, epoch) pairs published by two workers: {fencing}"
    )
    kills = [o.all_s / lease for lease, outages in figures.outages.items() for o in outages if o.signal == "SIGKILL"]
    terms = [o.all_s for outages in figures.outages.values() for o in outages if o.signal == "SIGTERM"]
    meaning = []
    if kills:
        meaning.append(
            f"a SIGKILLed worker's streams come back after about its lease (at most {max(kills):.2f} x lease_s "
            f"over {len(kills)} kills)"
        )
    if terms:
        meaning.append(f"a SIGTERMed one's within {max(terms):.1f} s (no lease to wait out)")
    every_join = [j for joins in figures.joins.values() for j in joins]
    if every_join:
        meaning.append(
            f"{len(every_join)} joins moved {sum(j.moved for j in every_join)} streams for an ideal of "
            f"{sum(j.ideal for j in every_join)}, {sum(len(j.twice) for j in every_join)} of them twice"
        )
    if figures.kv:
        lease_s, kv = min(figures.kv.items())
        meaning.append(
            f"at lease_s {lease_s:g} each stream costs the NATS cluster {kv.writes_per_s / kv.streams:.2f} "
            f"writes/s and ~{kv.reads_per_s / kv.streams:.1f} reads/s, the reads growing with workers x streams "
            "(every worker re-reads the catalog and the leases every tick)"
        )
    print("what this means: " + "; ".join(meaning) + ".")


async def bench(args: argparse.Namespace, nats_url: str) -> Figures:
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="scaleout-") as folder:
        clip = tiny_clip(Path(folder) / "clip.mp4", args.fps)
        for lease_s in args.leases:
            await one_lease(args, lease_s, nats_url, Path(folder), clip, figures)
    return figures


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=3, help="worker processes N (default 3)")
    parser.add_argument("--streams", type=int, default=12, help="looping file streams M (default 12)")
    parser.add_argument("--repeats", type=int, default=3, help="SIGKILLs, and SIGTERMs, per lease R (default 3)")
    parser.add_argument("--leases", default="3,10", help="cluster.lease_s values, comma-separated (default 3,10)")
    parser.add_argument("--kv-window-s", type=float, default=20.0, help="the quiet key-value window (default 20)")
    parser.add_argument("--fps", type=int, default=10, help="the clip's frame rate, played at native rate (default 10)")
    parser.add_argument("--no-decode", action="store_true", help="streams -> publish (no decode stage)")
    parser.add_argument("--estimate-streams", type=int, default=1000, help="size of the estimate (default 1000)")
    parser.add_argument("--estimate-workers", type=int, default=50, help="workers of the estimate (default 50)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--verbose", action="store_true", help="print every owner_changed event and each step")
    parser.add_argument("--logs", type=Path, help="keep the workers' logs in this folder (default: a temp folder)")
    args = parser.parse_args(argv)
    try:
        args.leases = [float(v) for v in args.leases.split(",") if v.strip()]
    except ValueError:
        parser.error("--leases takes numbers, e.g. 3,10")
    if args.workers < 2 or args.streams < 1 or args.repeats < 0 or args.fps < 1 or args.kv_window_s <= 0:
        parser.error("--workers at least 2, --streams and --fps at least 1, --kv-window-s positive")
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
    if not args.leases or min(args.leases) < 1:
        parser.error("--leases: at least one, each at least 1 (cluster.lease_s)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cores = os.cpu_count() or 1
    print(
        f"machine: {cpu_model()}, {cores} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, nats-py {version('nats-py')}, {nats_server_version()}; "
        "load average at start: "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    work = "streams -> publish" if args.no_decode else "streams -> decode -> publish"
    print(
        f"{args.workers} workers x {args.streams} streams ({work}; a 96x64 clip at {args.fps} frames/s, looped at "
        f"native rate), one nats-server with JetStream (buckets with 1 replica); lease_s {args.leases}; "
        f"{args.repeats} SIGKILLs and {args.repeats} SIGTERMs per lease",
        flush=True,
    )
    began = time.monotonic()
    with NatsServer(jetstream=True) as server:
        figures = asyncio.run(bench(args, server.url))
    print_figures(args, figures)
    print(
        f"ran {(time.monotonic() - began) / 60:.1f} min; load average at end: "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
