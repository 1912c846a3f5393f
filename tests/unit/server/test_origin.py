"""pipeline.server.origin: which ``Origin`` values are the same origin (the scheme's default port
filled in, host case ignored) and which match nothing."""

from __future__ import annotations

import pytest

from pipeline.server.origin import origin_key


@pytest.mark.parametrize(
    ("origin", "same_as"),
    [
        ("http://127.0.0.1", "http://127.0.0.1:80"),
        ("https://Cams.Example", "https://cams.example:443"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_the_same_origin_written_two_ways(origin: str, same_as: str) -> None:
    assert origin_key(origin) == origin_key(same_as) is not None


@pytest.mark.parametrize(
    ("origin", "other"),
    [
        ("http://127.0.0.1:8080", "https://127.0.0.1:8080"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8081"),
        ("http://localhost:8080", "http://127.0.0.1:8080"),
    ],
)
def test_another_scheme_host_or_port_is_another_origin(origin: str, other: str) -> None:
    assert origin_key(origin) != origin_key(other)


@pytest.mark.parametrize("origin", ["null", "", "x", "http://x:99999", "://x"])
def test_an_origin_that_is_no_url_matches_nothing(origin: str) -> None:
    assert origin_key(origin) is None
