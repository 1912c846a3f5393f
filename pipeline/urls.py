"""The URLs a config names, checked before anything connects: a URL of given schemes with a host
and a port (``url_problem``), and ``nats.url``, one NATS server or the comma-separated seeds of a
NATS cluster (``nats_url_problem``, ``nats_seeds``, ``url_login``). Every message masks passwords:
it is shown and logged."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from .logs import mask_secrets

NATS_SCHEMES = ("nats", "tls", "ws", "wss")


def url_problem(url: str, schemes: tuple[str, ...], expected: str) -> str | None:
    """What is wrong with a URL that must be of one of ``schemes``, with a host and a numeric port
    if any (``expected`` says what was, for the message), or None. A config's URLs are checked by
    ``validate`` this way, not first when the run connects."""
    parts = urlsplit(url)
    shown = mask_secrets(url)  # the message is shown and logged: never with a password
    if parts.scheme not in schemes or not parts.hostname:
        return f"expected {expected}, got {shown!r}"
    try:
        parts.port  # noqa: B018  (parsing it is the check)
    except ValueError:
        return f"bad port in {shown!r}"
    return None


_SEED_SEPARATOR = re.compile(r"\s*,(?=\s*(?:[A-Za-z][A-Za-z0-9+.-]*://|,|$))\s*")
"""A comma between two seeds of a ``nats.url``: one followed by a scheme (or by nothing, an empty
seed), so a password may hold a comma."""


def nats_seeds(url: str) -> list[str]:
    """The seed URLs of a ``nats.url``: one, or the servers of a NATS cluster separated by commas
    (``nats://n1:4222,nats://n2:4222``), each stripped of spaces. A seed may be empty (an error of
    ``nats_url_problem``); a URL without such a comma is its only seed, as given."""
    seeds = _SEED_SEPARATOR.split(url)
    return [seed.strip() for seed in seeds] if len(seeds) > 1 else [url]


def url_login(url: str) -> tuple[str, str | None] | None:
    """The login in a URL, percent-decoded: ``(user, password)``, ``(token, None)`` for a user
    name alone (NATS reads it as a token), or None."""
    parts = urlsplit(url)
    if parts.username is not None and parts.password is not None:
        return unquote(parts.username), unquote(parts.password)
    if parts.username:
        return unquote(parts.username), None
    return None


def nats_url_problem(url: str) -> str | None:
    """What is wrong with a ``nats.url``: ``embedded``, or a URL of a NATS scheme with a host, or
    several (the seeds of a cluster, comma-separated) of one scheme, with one login if any (on
    one seed or the same on each). A message names the seed at fault, its password masked."""
    if url == "embedded":
        return None
    seeds = nats_seeds(url)
    if len(seeds) == 1:
        return _nats_seed_problem(seeds[0], f"'embedded' or nats://host:port ({', '.join(NATS_SCHEMES)})")
    for number, seed in enumerate(seeds, 1):
        where = f"seed {number} of {len(seeds)}"
        if not seed:
            return f"{where} is empty in {mask_secrets(url)!r}"
        if seed == "embedded":
            return f"{where}: 'embedded' is a value of its own, not a seed of a list"
        if problem := _nats_seed_problem(seed, f"nats://host:port ({', '.join(NATS_SCHEMES)})"):
            return f"{where}: {problem}"
    schemes = [urlsplit(seed).scheme for seed in seeds]
    if len(set(schemes)) > 1:
        number = next(n for n, scheme in enumerate(schemes, 1) if scheme != schemes[0])
        return (
            f"seed {number} of {len(seeds)}: every seed needs the same scheme ({schemes[0]}://), "
            f"got {mask_secrets(seeds[number - 1])!r}"
        )
    logins = [(number, login) for number, seed in enumerate(seeds, 1) if (login := url_login(seed)) is not None]
    for number, login in logins[1:]:
        if login != logins[0][1]:
            return (
                f"seed {number} of {len(seeds)} ({mask_secrets(seeds[number - 1])!r}) logs in differently from "
                f"seed {logins[0][0]}: give the same user:password (or token) on every seed, or on one"
            )
    return None


def _nats_seed_problem(seed: str, expected: str) -> str | None:
    if "," in urlsplit(seed).netloc.rpartition("@")[2]:  # nats://n1:4222,n2:4222
        example = "nats://n1:4222,nats://n2:4222"
        return f"every seed of a comma-separated list needs its scheme ({example}), got {mask_secrets(seed)!r}"
    return url_problem(seed, NATS_SCHEMES, expected)
