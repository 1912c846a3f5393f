"""TLS from files a config names: the files checked (each error names its key), and the
``ssl.SSLContext`` a client (NATS) or a server (the HTTP API) uses.

Relative paths are relative to the config file's directory (``base_dir``), as every path of a
pipeline YAML is. A certificate and its key go together: one without the other is an error naming
the one that is missing.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from .config import ApiConfig
from .errors import ConfigError


def config_file(key: str, value: str, base_dir: Path) -> Path:
    """The file a key names, resolved against ``base_dir``; a ``ConfigError`` at ``key`` when
    there is no such file."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if not path.is_file():
        raise ConfigError(key, f"no such file: {path}")
    return path


def cert_and_key(
    cert: str | None, key: str | None, *, cert_key: str, key_key: str, base_dir: Path
) -> tuple[Path, Path] | None:
    """Both files (checked), None when neither is given; one without the other is an error
    naming the missing key."""
    if cert is None and key is None:
        return None
    if key is None:
        raise ConfigError(key_key, f"required with {cert_key} (the private key of that certificate)")
    if cert is None:
        raise ConfigError(cert_key, f"required with {key_key} (the certificate of that private key)")
    return config_file(cert_key, cert, base_dir), config_file(key_key, key, base_dir)


def client_context(*, ca: Path | None, pair: tuple[Path, Path] | None, ca_key: str, cert_key: str) -> ssl.SSLContext:
    """A client's context: the server's certificate verified against ``ca`` (the system's CAs
    without one), and ``pair`` (certificate, key) presented when the server asks for one."""
    context = ssl.create_default_context()
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(ca_key, f"cannot read CA certificates from {ca}: {_reason(exc)}") from None
    if pair is not None:
        _load_pair(context, pair, cert_key)
    return context


def server_context(pair: tuple[Path, Path], *, cert_key: str) -> ssl.SSLContext:
    """A server's context with its certificate (and chain) and key; TLS 1.2 at least."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_pair(context, pair, cert_key)
    return context


def _load_pair(context: ssl.SSLContext, pair: tuple[Path, Path], cert_key: str) -> None:
    cert, key = pair
    try:
        # No passphrase: an encrypted key is an error here, never a prompt on the terminal.
        context.load_cert_chain(str(cert), str(key), password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(cert_key, f"cannot load the certificate {cert} with the key {key}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return str(reason or exc or type(exc).__name__)


def api_server_context(api: ApiConfig, base_dir: Path) -> ssl.SSLContext | None:
    """The HTTP API's context: None without ``api.tls_cert`` and ``api.tls_key`` (plain HTTP)."""
    pair = cert_and_key(api.tls_cert, api.tls_key, cert_key="api.tls_cert", key_key="api.tls_key", base_dir=base_dir)
    return server_context(pair, cert_key="api.tls_cert") if pair is not None else None
