"""Connecting with secrets: ``pipeline.natsconnect`` (a NATS URL's user, password or token, the
credentials file, TLS files), ``pipeline.tls`` (the API's certificate), the config keys that name
them, and ``pipeline.logs``' masking of passwords in every URL shown. Against real servers:
tests/integration/test_nats_auth.py, test_tls.py, test_secrets.py."""

from __future__ import annotations

import importlib.util
import json
import logging
import ssl
import sys
from collections.abc import Iterator

import pytest

from pipeline import cli
from pipeline.bus import NatsServer, free_port
from pipeline.config import NatsConfig, parse_config
from pipeline.errors import BusError, ConfigError
from pipeline.logs import JsonFormatter, TextFormatter, mask_secrets, redact
from pipeline.natsconnect import NatsAuth, nats_target, open_connection
from pipeline.service import build
from pipeline.tls import api_server_context
from pipeline.urls import nats_seeds, nats_url_problem
from tests.certs import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``cli.main`` points the root logger at the (captured) stderr: put things back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers[:], level = saved
    root.setLevel(level)


# --- masking ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:s3cret@cam.local:554/live", "rtsp://admin:***@cam.local:554/live"),
        ("rtsp://cam.local/live", "rtsp://cam.local/live"),
        ("rtsp://user@cam.local/live", "rtsp://user@cam.local/live"),  # a user name is no secret in RTSP
        ("rtsp://u:p@ss@cam/x", "rtsp://u:***@cam/x"),  # the password runs to the last @
        ("rtsp://u:@cam/x", "rtsp://u:***@cam/x"),
        ("nats://service:pw%2F1@127.0.0.1:4222", "nats://service:***@127.0.0.1:4222"),
        ("nats://s3cr3t-token@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),  # NATS reads it as a token
        ("tls://tok@nats.internal", "tls://***@nats.internal"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("rtsp://u:p@h:99999/x", "rtsp://u:***@h:99999/x"),  # a URL that does not parse is masked too
    ],
)
def test_redact_masks_passwords_and_nats_tokens(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_every_url_in_a_text_is_masked() -> None:
    text = "lost rtsp://a:pw1@h/x: then nats://b:pw2@n:4222, tls://tok3@t and /no/url:here@x"
    assert mask_secrets(text) == "lost rtsp://a:***@h/x: then nats://b:***@n:4222, tls://***@t and /no/url:here@x"


def test_the_formatters_mask_messages_and_tracebacks() -> None:
    try:
        raise OSError("cannot open rtsp://cam:hunter2@10.0.0.9/live")
    except OSError:
        record = logging.LogRecord("libav", logging.ERROR, __file__, 1, "open %s", ("nats://u:hunter2@n",), None)
        record.exc_info = sys.exc_info()
    text = TextFormatter().format(record)
    assert "hunter2" not in text and "nats://u:***@n" in text and "rtsp://cam:***@10.0.0.9/live" in text
    record.exc_text = None  # formatted again, from exc_info
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "open nats://u:***@n"
    assert "hunter2" not in entry["exception"] and "rtsp://cam:***@" in entry["exception"]


# --- the NATS URL and keys --------------------------------------------------------------------------


def test_a_url_password_is_taken_out_of_the_url_and_decoded() -> None:
    target = nats_target("nats://service:p%40ss%2Fw%3Ard@127.0.0.1:4222")
    assert target.servers == ("nats://127.0.0.1:4222",)
    assert target.shown == "nats://service:***@127.0.0.1:4222"
    assert target.options == {"user": "service", "password": "p@ss/w:rd"}


def test_a_user_name_alone_is_a_token_and_so_is_nats_token() -> None:
    assert nats_target("nats://t%2Bk@h:4222").options == {"token": "t+k"}
    assert nats_target("nats://h:4222", NatsAuth(token="tk")).options == {"token": "tk"}


def test_two_ways_to_log_in_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^nats\.token: give one way to log in to NATS"):
        nats_target("nats://u:p@h:4222", NatsAuth(token="tk"))


@pytest.mark.parametrize(
    "url", ["nats://u:p@h:4222", "tls://u:p%20w@h:4222", "nats://tok@h", "nats://u:p@[::1]:4222", "ws://u:p@h:80"]
)
def test_the_url_check_takes_user_information(url: str) -> None:
    assert NatsConfig(url=url).url == url


def test_a_bad_url_is_refused_without_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"pipeline": "p", "nats": {"url": "nats://u:hunter2@h:99999"}, "stages": [{"name": "a"}]})
    assert str(info.value) == "nats.url: bad port in 'nats://u:***@h:99999'"


@pytest.mark.parametrize("key", ["credentials", "token", "tls_ca", "tls_cert", "tls_key"])
def test_login_and_tls_keys_need_a_server_url(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"pipeline": "p", "nats": {key: "x"}, "stages": [{"name": "a"}]})
    assert str(info.value).startswith(f"nats.{key}: the embedded nats-server has no authorization and no TLS")


def test_the_token_is_not_in_the_config_repr() -> None:
    assert "hunter2" not in repr(NatsConfig(url="nats://h:4222", token="hunter2"))


def test_tls_files_resolve_against_the_config_directory(pki: Pki) -> None:
    auth = NatsAuth(tls_ca="ca.pem", tls_cert="client.pem", tls_key="client-key.pem")
    target = nats_target("nats://h:4222", auth, base_dir=pki.ca.parent)
    assert isinstance(target.options["tls"], ssl.SSLContext)
    assert target.options["tls"].verify_mode == ssl.CERT_REQUIRED


def test_a_tls_url_gets_a_context_of_the_system_cas() -> None:
    context = nats_target("tls://h:4222").options["tls"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("auth", "says"),
    [
        (NatsAuth(tls_ca="nope.pem"), "nats.tls_ca: no such file: "),
        (NatsAuth(tls_cert="client.pem"), "nats.tls_key: required with nats.tls_cert"),
        (NatsAuth(tls_key="client-key.pem"), "nats.tls_cert: required with nats.tls_key"),
        (NatsAuth(tls_cert="nope.pem", tls_key="client-key.pem"), "nats.tls_cert: no such file: "),
        (NatsAuth(tls_cert="client.pem", tls_key="server-key.pem"), "nats.tls_cert: cannot load the certificate"),
        (NatsAuth(tls_ca="client-key.pem"), "nats.tls_ca: cannot read CA certificates"),
        (NatsAuth(credentials="nope.creds"), "nats.credentials: no such file: "),
    ],
)
def test_tls_and_credentials_errors_name_the_key(pki: Pki, auth: NatsAuth, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        nats_target("nats://h:4222", auth, base_dir=pki.ca.parent)
    assert str(info.value).startswith(says)


def test_a_credentials_file_is_passed_on(pki: Pki) -> None:
    creds = pki.ca.parent / "user.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n...\n")
    if importlib.util.find_spec("nkeys") is None:
        with pytest.raises(ConfigError, match=r"^nats\.credentials: a credentials file needs the nkeys package"):
            nats_target("nats://h:4222", NatsAuth(credentials="user.creds"), base_dir=creds.parent)
    else:
        target = nats_target("nats://h:4222", NatsAuth(credentials="user.creds"), base_dir=creds.parent)
        assert target.options == {"user_credentials": str(creds)}


# --- the seeds of a NATS cluster ------------------------------------------------------------------------

SEEDS = "nats://n1:4222,nats://n2:4222,nats://n3:4222"


@pytest.mark.parametrize(
    ("url", "seeds"),
    [
        (SEEDS, ["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"]),
        (" nats://n1:4222 , nats://n2:4222 ", ["nats://n1:4222", "nats://n2:4222"]),
        ("tls://u:p@n1:4222,tls://u:p@n2:4222", ["tls://u:p@n1:4222", "tls://u:p@n2:4222"]),
        ("nats://n1:4222", ["nats://n1:4222"]),
        ("nats://u:p,w@n1:4222", ["nats://u:p,w@n1:4222"]),  # a comma not followed by a scheme: the password's
        ("nats://n1:4222,", ["nats://n1:4222", ""]),
    ],
)
def test_a_url_splits_into_its_seeds_where_a_scheme_follows_a_comma(url: str, seeds: list[str]) -> None:
    assert nats_seeds(url) == seeds


@pytest.mark.parametrize(
    "url",
    [
        SEEDS,
        "nats://n1:4222, nats://n2:4222",
        "tls://n1:4222,tls://n2:4222,tls://n3:4222",
        "ws://n1:8080/nats,ws://n2:8080/nats",
        "nats://u:p%2Cw@n1:4222,nats://n2:4222,nats://n3:4222",  # the login on one seed is every seed's
        "nats://n1:4222,nats://u:p,w@n2:4222,nats://n3:4222",
        "nats://u:pw@n1:4222,nats://u:pw@n2:4222",  # or the same on each
        "nats://u:p%40w@n1:4222,nats://u:p@w@n2:4222",  # the same once decoded
        "nats://tok@n1:4222,nats://tok@n2:4222",
    ],
)
def test_a_url_may_list_the_seeds_of_a_cluster(url: str) -> None:
    assert nats_url_problem(url) is None
    assert NatsConfig(url=url).url == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("nats://n1:4222,nats://u:hunter2@n2:99999", "seed 2 of 2: bad port in 'nats://u:***@n2:99999'"),
        (
            "nats://n1:4222,http://u:hunter2@n2:80,nats://n3:4222",
            "seed 2 of 3: expected nats://host:port (nats, tls, ws, wss), got 'http://u:***@n2:80'",
        ),
        (
            "nats://n1:4222,nats://:4222",
            "seed 2 of 2: expected nats://host:port (nats, tls, ws, wss), got 'nats://:4222'",
        ),
        ("nats://u:hunter2@n1:4222,", "seed 2 of 2 is empty in 'nats://u:***@n1:4222,'"),
        ("nats://n1:4222,,nats://n3:4222", "seed 2 of 3 is empty in 'nats://n1:4222,,nats://n3:4222'"),
        ("embedded,nats://n2:4222", "seed 1 of 2: 'embedded' is a value of its own, not a seed of a list"),
        (
            "nats://u:hunter2@n1:4222,n2:4222",
            "every seed of a comma-separated list needs its scheme (nats://n1:4222,nats://n2:4222), "
            "got 'nats://u:***@n1:4222,n2:4222'",
        ),
        (
            "nats://n1:4222,tls://n2:4222",
            "seed 2 of 2: every seed needs the same scheme (nats://), got 'tls://n2:4222'",
        ),
        ("ws://n1:80,nats://n2:4222", "seed 2 of 2: every seed needs the same scheme (ws://), got 'nats://n2:4222'"),
        (
            "nats://u:hunter2@n1:4222,nats://n2:4222,nats://u:hunter3@n3:4222",
            "seed 3 of 3 ('nats://u:***@n3:4222') logs in differently from seed 1: "
            "give the same user:password (or token) on every seed, or on one",
        ),
        (
            "nats://n1:4222,nats://hunter2@n2:4222,nats://u:hunter2@n3:4222",  # a token, then a user:password
            "seed 3 of 3 ('nats://u:***@n3:4222') logs in differently from seed 2: "
            "give the same user:password (or token) on every seed, or on one",
        ),
    ],
)
def test_a_bad_seed_is_named_without_any_password(url: str, says: str) -> None:
    assert nats_url_problem(url) == says
    with pytest.raises(ConfigError) as info:
        parse_config({"pipeline": "p", "nats": {"url": url}, "stages": [{"name": "a"}]})
    assert str(info.value) == f"nats.url: {says}"
    assert "hunter" not in str(info.value)


def test_the_connection_gets_every_seed_without_its_login() -> None:
    target = nats_target("nats://n1:4222, nats://svc:p%40ss@n2:4222,nats://n3:4222")
    assert target.servers == ("nats://n1:4222", "nats://n2:4222", "nats://n3:4222")
    assert target.options == {"user": "svc", "password": "p@ss"}
    assert target.shown == "nats://n1:4222,nats://svc:***@n2:4222,nats://n3:4222"  # one line, masked
    assert nats_target("nats://t%2Bk@n1:4222,nats://t%2Bk@n2:4222").options == {"token": "t+k"}
    assert nats_target(SEEDS).options == {} and nats_target(SEEDS).shown == SEEDS


def test_seeds_that_log_in_differently_are_a_config_error_naming_the_key() -> None:
    url = "nats://u:hunter2@n1:4222,nats://u:other@n2:4222"
    with pytest.raises(ConfigError, match=r"^nats\.url: seed 2 of 2 \('nats://u:\*\*\*@n2:4222'\) logs in differently"):
        nats_target(url)
    with pytest.raises(ConfigError, match=r"^--nats-url: seed 2 of 2"):
        nats_target(url, key=lambda name: "--nats-url" if name == "url" else name)
    with pytest.raises(ConfigError, match=r"^nats\.token: give one way to log in to NATS"):
        nats_target("nats://n1:4222,nats://u:p@n2:4222", NatsAuth(token="tk"))


def test_tls_seeds_get_a_tls_context() -> None:
    context = nats_target("tls://n1:4222,tls://n2:4222").options["tls"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED


def test_every_seed_of_a_list_is_masked_in_text() -> None:
    text = "connected to nats://u:pw1@n1:4222,nats://tok@n2:4222,nats://u:p,w@n3:4222 at last"
    assert mask_secrets(text) == "connected to nats://u:***@n1:4222,nats://***@n2:4222,nats://u:***@n3:4222 at last"


async def test_no_seed_answering_is_one_error_naming_each_seed_masked() -> None:
    first, second = free_port(), free_port()  # nobody listens there
    target = nats_target(f"nats://u:hunter2@127.0.0.1:{first},nats://127.0.0.1:{second}")
    with pytest.raises(BusError) as info:
        await open_connection(target, attempts=1, connect_timeout=2)
    message = str(info.value)
    assert message.startswith(
        f"cannot connect to NATS at any of nats://u:***@127.0.0.1:{first},nats://127.0.0.1:{second}: "
        f"nats://u:***@127.0.0.1:{first}: "
    )
    assert f"; nats://127.0.0.1:{second}: " in message and "hunter2" not in message


async def test_a_dead_first_seed_is_passed_over_and_every_seed_is_kept_for_reconnects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("pipeline.natsconnect.random.sample", lambda seeds, k: list(seeds)[:k])  # seed order
    dead = free_port()
    with NatsServer() as server:
        target = nats_target(f"nats://127.0.0.1:{dead},{server.url}")
        client = await open_connection(target, attempts=1, connect_timeout=2)
        try:
            assert client.is_connected and client.connected_url.port == server.port
            pool = {srv.uri.port for srv in client._server_pool}  # nats-py's pool: where a reconnect may go
            assert {dead, server.port} <= pool
            assert client.options["allow_reconnect"] and client.options["max_reconnect_attempts"] == -1
        finally:
            await client.close()


# --- the API's certificate ----------------------------------------------------------------------------


def _config(pki: Pki, api: dict[str, str]) -> dict[str, object]:
    return {
        "pipeline": "p",
        "api": {"listen": "127.0.0.1:0", **api},
        "stages": [{"name": "src", "type": "streams"}],
    }


def test_the_api_serves_tls_with_both_keys(pki: Pki) -> None:
    config = parse_config(_config(pki, {"tls_cert": "server.pem", "tls_key": "server-key.pem"}), base_dir=pki.ca.parent)
    assert config.api is not None
    context = api_server_context(config.api, config.base_dir)
    assert isinstance(context, ssl.SSLContext) and context.minimum_version >= ssl.TLSVersion.TLSv1_2
    plain = parse_config(_config(pki, {}), base_dir=pki.ca.parent)
    assert plain.api is not None and api_server_context(plain.api, plain.base_dir) is None


@pytest.mark.parametrize(
    ("api", "says"),
    [
        ({"tls_cert": "server.pem"}, "api.tls_key: required with api.tls_cert"),
        ({"tls_key": "server-key.pem"}, "api.tls_cert: required with api.tls_key"),
        ({"tls_cert": "gone.pem", "tls_key": "server-key.pem"}, "api.tls_cert: no such file: "),
        ({"tls_cert": "server.pem", "tls_key": "gone.pem"}, "api.tls_key: no such file: "),
        ({"tls_cert": "ca.pem", "tls_key": "server-key.pem"}, "api.tls_cert: cannot load the certificate"),
    ],
)
def test_validate_names_the_api_key_at_fault(pki: Pki, api: dict[str, str], says: str) -> None:
    config = parse_config(_config(pki, api), base_dir=pki.ca.parent)
    with pytest.raises(ConfigError) as info:
        build(config, source="pipeline.yaml")
    assert str(info.value).startswith(f"pipeline.yaml: {says}")


# --- the subscribe command ------------------------------------------------------------------------------


def test_subscribe_names_the_server_without_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nobody listens there
    url = f"nats://viewer:hunter2@127.0.0.1:{port}"
    assert cli.main(["--log-level", "WARNING", "subscribe", "--nats-url", url, "x.>"]) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"error: cannot connect to NATS at nats://viewer:***@127.0.0.1:{port}")
    assert "hunter2" not in err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--tls-cert", "c.pem"], "error: --tls-key: required with --tls-cert"),
        (["--tls-ca", "gone.pem"], "error: --tls-ca: no such file: "),
        (["--creds", "gone.creds"], "error: --creds: no such file: "),
        (["--nats-url", "nats://u:hunter2@h:99999"], "error: --nats-url: bad port in 'nats://u:***@h:99999'"),
    ],
)
def test_subscribe_option_errors_name_the_option(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["subscribe", *argv, "x.>"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(says), err
    assert "hunter2" not in err
