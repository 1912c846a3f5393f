"""Helpers of the security tests: a nats-server started with a configuration file (skipped
without the binary, failed in CI), and the configuration blocks of docs/security.md."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.bus import NatsServer, nats_server_binary
from pipeline.errors import BusError

from .support import ROOT

SECURITY_DOC = ROOT / "docs" / "security.md"


def require_nats_server() -> None:
    """Skip where no nats-server is installed; fail in CI (``CI=true``), which must run these."""
    try:
        nats_server_binary()
    except BusError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


def doc_block(title: str) -> str:
    """The fenced block of docs/security.md whose first line is ``# nats-server.conf: <title>``."""
    text = SECURITY_DOC.read_text()
    found = re.search(rf"```text\n(# nats-server\.conf: {re.escape(title)}\n.*?)```", text, re.S)
    assert found, f"docs/security.md has no nats-server.conf block titled {title!r}"
    return found.group(1)


@contextmanager
def configured_server(config_text: str, directory: Path) -> Iterator[NatsServer]:
    """A real nats-server on a free loopback port, started with ``config_text`` as its file."""
    require_nats_server()
    config = directory / "nats-server.conf"
    config.write_text(config_text)
    with NatsServer(config=config) as server:
        yield server
