"""What ``nats.connect`` is given to reach a server with authorization or TLS.

* ``user:password@`` in the URL is taken out of it and passed as ``user``/``password``,
  percent-decoded (so a password may hold any character); a user name alone is a token, as NATS
  reads it. ``nats.token`` and ``nats.credentials`` (a ``.creds`` file: a user JWT and its nkey
  seed, for JWT accounts) are the other ways; only one may be given.
* TLS (``nats.tls_ca``, ``nats.tls_cert`` + ``nats.tls_key``, or a ``tls://`` URL): an
  ``ssl.SSLContext`` (``pipeline.tls``) that checks the server's certificate and presents the
  client's.

``NatsTarget.shown`` is the URL as messages and logs may show it: the password (or token) masked.
Errors name the key at fault (``nats.tls_ca``; the ``subscribe`` command names its options).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import nats
from nats.aio.client import Client

from .config import NatsConfig
from .errors import BusError, ConfigError
from .logs import redact
from .tls import cert_and_key, client_context, config_file

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
    server: str
    """The URL nats-py connects to: no user information in it."""
    shown: str
    """The URL as given, its password or token masked: for messages and logs."""
    options: dict[str, Any]
    """``nats.connect`` keywords: ``user``/``password``, ``token``, ``user_credentials``, ``tls``."""


def nats_target(
    url: str, auth: NatsAuth = NO_AUTH, *, base_dir: Path = Path("."), key: KeyName = config_key
) -> NatsTarget:
    """The server, how it is shown, and the keywords to connect with; a ``ConfigError`` naming
    the key at fault for a missing file, a certificate without its key, or two ways to log in."""
    parts = urlsplit(url)
    server = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    options: dict[str, Any] = {}
    ways = []
    if parts.username is not None and parts.password is not None:
        options["user"], options["password"] = unquote(parts.username), unquote(parts.password)
        ways.append("the URL's user:password")
    elif parts.username:
        options["token"] = unquote(parts.username)
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
    if auth.uses_tls or parts.scheme == "tls":
        ca = config_file(key("tls_ca"), auth.tls_ca, base_dir) if auth.tls_ca is not None else None
        pair = cert_and_key(
            auth.tls_cert, auth.tls_key, cert_key=key("tls_cert"), key_key=key("tls_key"), base_dir=base_dir
        )
        options["tls"] = client_context(ca=ca, pair=pair, ca_key=key("tls_ca"), cert_key=key("tls_cert"))
    return NatsTarget(server, redact(url), options)


async def open_connection(target: NatsTarget, *, attempts: int, **options: Any) -> Client:
    """``nats.connect`` to ``target`` with ``options`` (callbacks, timeouts): up to ``attempts``
    more tries while the server cannot be reached, then a ``BusError`` naming it (the password
    masked). A server that refuses the connection (TLS, authorization) fails it at once: nats-py
    (2.16), allowed to retry then, waits forever for the failed TLS socket to close. Once
    connected, the client reconnects forever (a bus restart must not end the caller)."""
    try:
        client = await nats.connect(
            target.server, **target.options, **options, allow_reconnect=False, max_reconnect_attempts=attempts
        )
    except Exception as exc:  # nats-py raises several unrelated types for "cannot connect"
        raise BusError(f"cannot connect to NATS at {target.shown}: {exc or type(exc).__name__}") from None
    client.options["allow_reconnect"] = True
    client.options["max_reconnect_attempts"] = -1
    return client
