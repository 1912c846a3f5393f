"""What ``nats.connect`` is given to reach a server with authorization or TLS.

* ``user:password@`` in the URL is taken out of it and passed as ``user``/``password``,
  percent-decoded (so a password may hold any character); a user name alone is a token, as NATS
  reads it. ``nats.token`` and ``nats.credentials`` (a ``.creds`` file: a user JWT and its nkey
  seed, for JWT accounts) are the other ways; only one may be given.
* TLS (``nats.tls_ca``, ``nats.tls_cert`` + ``nats.tls_key``, or a ``tls://`` URL): an
  ``ssl.SSLContext`` (``pipeline.tls``) that checks the server's certificate and presents the
  client's.

A NATS cluster is given as its seed URLs separated by commas (``nats://n1:4222,nats://n2:4222``,
``pipeline.urls.nats_seeds``): nats-py gets every seed, connects to one and, once connected,
fails over to another (or to a server the cluster told it of) when its server goes away. A login
may be on any seed; it must be the same on each that has one.

``NatsTarget.shown`` is the URL as messages and logs may show it: the password (or token) masked,
the seeds on one line, comma-separated. Errors name the key at fault (``nats.tls_ca``; the
``subscribe`` command names its options).
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import nats
from nats.aio.client import Client

from .config import NatsConfig
from .errors import BusError, ConfigError
from .logs import redact
from .tls import cert_and_key, client_context, config_file
from .urls import nats_seeds, nats_url_problem, url_login

KeyName = Callable[[str], str]
"""How an error names a setting (``tls_ca`` -> ``nats.tls_ca``, or ``--tls-ca`` on a command line)."""


def config_key(name: str) -> str:
    return f"nats.{name}"


@dataclass(frozen=True, kw_only=True)
class NatsAuth:
    """The authorization and TLS settings besides the URL (``NatsConfig``'s, or a command's)."""

    credentials: str | None = None
    token: str = ""
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def of(cls, config: NatsConfig) -> NatsAuth:
        return cls(
            credentials=config.credentials,
            token=config.token,
            tls_ca=config.tls_ca,
            tls_cert=config.tls_cert,
            tls_key=config.tls_key,
        )

    @property
    def uses_tls(self) -> bool:
        return any(value is not None for value in (self.tls_ca, self.tls_cert, self.tls_key))


NO_AUTH = NatsAuth()
"""No login, no TLS (a ``nats://`` URL may still carry a user and password)."""


@dataclass(frozen=True)
class NatsTarget:
    servers: tuple[str, ...]
    """The seed URLs nats-py connects to (one, or a cluster's): no user information in them."""
    seeds_shown: tuple[str, ...]
    """The seeds as given, each password or token masked: for messages and logs."""
    options: dict[str, Any]
    """``nats.connect`` keywords: ``user``/``password``, ``token``, ``user_credentials``, ``tls``."""

    @property
    def shown(self) -> str:
        """The URL as given (the seeds comma-separated), passwords and tokens masked."""
        return ",".join(self.seeds_shown)


def nats_target(
    url: str, auth: NatsAuth = NO_AUTH, *, base_dir: Path = Path("."), key: KeyName = config_key
) -> NatsTarget:
    """The servers (the seeds of ``url``), how they are shown, and the keywords to connect with;
    a ``ConfigError`` naming the key at fault for a bad URL (a seed of it, or seeds that log in
    differently), a missing file, a certificate without its key, or two ways to log in."""
    if problem := nats_url_problem(url):
        raise ConfigError(key("url"), problem)
    seeds = nats_seeds(url)
    servers = tuple(
        urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])) for parts in map(urlsplit, seeds)
    )
    options: dict[str, Any] = {}
    ways = []
    login = next((found for seed in seeds if (found := url_login(seed)) is not None), None)
    if login is not None and login[1] is not None:
        options["user"], options["password"] = login
        ways.append("the URL's user:password")
    elif login is not None:
        options["token"] = login[0]
        ways.append("the URL's token")
    if auth.token:
        options["token"] = auth.token
        ways.append(key("token"))
    if auth.credentials is not None:
        options["user_credentials"] = str(config_file(key("credentials"), auth.credentials, base_dir))
        if importlib.util.find_spec("nkeys") is None:
            raise ConfigError(key("credentials"), "a credentials file needs the nkeys package: pip install nkeys")
        ways.append(key("credentials"))
    if len(ways) > 1:
        raise ConfigError(ways[-1], f"give one way to log in to NATS, not {' and '.join(ways)}")
    if auth.uses_tls or any(urlsplit(seed).scheme == "tls" for seed in seeds):
        ca = config_file(key("tls_ca"), auth.tls_ca, base_dir) if auth.tls_ca is not None else None
        pair = cert_and_key(
            auth.tls_cert, auth.tls_key, cert_key=key("tls_cert"), key_key=key("tls_key"), base_dir=base_dir
        )
        options["tls"] = client_context(ca=ca, pair=pair, ca_key=key("tls_ca"), cert_key=key("tls_cert"))
    return NatsTarget(servers, tuple(redact(seed) for seed in seeds), options)


async def open_connection(target: NatsTarget, *, attempts: int, **options: Any) -> Client:
    """``nats.connect`` to ``target`` with ``options`` (callbacks, timeouts): each seed tried once
    (in a random order, as nats-py does, so many workers spread over a cluster's seeds), then a
    ``BusError`` naming them and why each failed (passwords masked). A server that refuses the
    connection (TLS, authorization) fails its try at once: nats-py (2.16), allowed to retry then,
    waits forever for the failed TLS socket to close. Once connected, the client knows every seed
    (and the servers the cluster tells it of) and reconnects forever, to whichever answers (a bus
    restart, or a cluster node's death, must not end the caller). ``attempts`` is nats-py's
    ``max_reconnect_attempts`` while connecting."""
    order = random.sample(range(len(target.servers)), len(target.servers))
    failures: dict[int, str] = {}
    for first in order:
        # Every seed in the pool (the first is the one tried), so reconnects may go to any of them.
        servers = [target.servers[(first + step) % len(target.servers)] for step in range(len(target.servers))]
        try:
            client = await nats.connect(
                servers,
                **target.options,
                **options,
                allow_reconnect=False,
                max_reconnect_attempts=attempts,
                dont_randomize=True,
            )
        except Exception as exc:  # nats-py raises several unrelated types for "cannot connect"
            failures[first] = str(exc) or type(exc).__name__
            continue
        client.options["allow_reconnect"] = True
        client.options["max_reconnect_attempts"] = -1
        client.options["dont_randomize"] = False  # reconnects spread over the servers, as nats-py's default
        return client
    if len(failures) == 1:
        raise BusError(f"cannot connect to NATS at {target.shown}: {failures[0]}")
    why = "; ".join(f"{target.seeds_shown[index]}: {failures[index]}" for index in sorted(failures))
    raise BusError(f"cannot connect to NATS at any of {target.shown}: {why}")
