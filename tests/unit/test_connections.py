"""Connection settings: Kafka mTLS and SASL, ClickHouse TLS, secrets kept out of every message.

No broker here: the TLS material is real (a throwaway CA made with ``cryptography``) and the
handshake that proves the worker's aiokafka context presents its certificate runs in memory.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from baton.processors.credentials import faust_credentials
from baton.schemas.errors import ConfigError
from baton.schemas.redact import mask_credentials
from baton.schemas.settings import Settings
from baton.sinks.clickhouse import parse_dsn
from baton.streams.kafka import admin_config, consumer_config, printable_config, producer_config
from baton.streams.sdk import ClientOptions
from tests.tls_support import Pki, make_pki, server_context

pytestmark = pytest.mark.unit

SECRET = "S3cret-Do-Not-Print"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _refused(**fields: Any) -> str:
    with pytest.raises(ConfigError) as info:
        Settings(**fields)
    message = str(info.value)
    assert "\n" not in message, "one line per problem, one error"
    return message


def _mtls(pki: Pki, **more: Any) -> dict[str, Any]:
    return {
        "security_protocol": "SSL",
        "ssl_cafile": pki.ca,
        "ssl_certfile": pki.client_cert,
        "ssl_keyfile": pki.client_key_encrypted,
        "ssl_key_password": pki.client_key_password,
        **more,
    }


# --- Kafka mTLS reaches every client ----------------------------------------------------------
def test_client_certificate_key_and_password_reach_every_confluent_client(pki: Pki) -> None:
    conf = Settings(**_mtls(pki)).kafka_config()
    expected = {
        "security.protocol": "SSL",
        "ssl.ca.location": str(pki.ca),
        "ssl.certificate.location": str(pki.client_cert),
        "ssl.key.location": str(pki.client_key_encrypted),
        "ssl.key.password": pki.client_key_password,
    }
    for built in (producer_config(conf), consumer_config(conf, "g"), admin_config(conf)):
        assert {k: built[k] for k in expected} == expected


def test_librdkafka_accepts_the_tls_config_and_loads_the_encrypted_key(pki: Pki) -> None:
    from confluent_kafka import KafkaException, Producer

    # librdkafka loads the certificate and key when the client is created: a wrong password
    # fails here, so this checks the properties really reach OpenSSL
    Producer(producer_config(Settings(**_mtls(pki)).kafka_config())).flush(0)
    bad = {**Settings(**_mtls(pki)).kafka_config(), "ssl.key.password": "wrong"}
    with pytest.raises(KafkaException, match=r"ssl\.key"):
        Producer(producer_config(bad))


def test_sasl_ssl_with_a_client_certificate_sets_both(pki: Pki) -> None:
    conf = Settings(
        **_mtls(pki, security_protocol="SASL_SSL"),
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="baton",
        sasl_password=SECRET,
    ).kafka_config()
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512" and conf["sasl.password"] == SECRET
    assert conf["ssl.certificate.location"] == str(pki.client_cert)


# --- the worker's Faust (aiokafka) connections get the same identity --------------------------
def _faust_credentials(settings: Settings) -> Any:
    return faust_credentials(settings)  # no Faust app is built for it


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> str:
    """A real TLS handshake over a socket pair; the client certificate's CN the server saw."""
    a, b = socket.socketpair()
    seen: dict[str, Any] = {}

    def serve() -> None:
        try:
            with server.wrap_socket(b, server_side=True) as tls:
                seen["subject"] = dict(x[0] for x in tls.getpeercert()["subject"])
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            seen["error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(a, server_hostname="localhost") as tls:
            tls.recv(2)
    finally:
        thread.join(5)
    if "error" in seen:
        raise seen["error"]
    return str(seen["subject"]["commonName"])


def test_faust_ssl_context_presents_the_client_certificate_in_a_real_handshake(pki: Pki) -> None:
    from faust.auth import SSLCredentials

    credentials = _faust_credentials(Settings(**_mtls(pki)))
    assert isinstance(credentials, SSLCredentials)
    assert credentials.context.verify_mode == ssl.CERT_REQUIRED
    assert credentials.context.check_hostname
    assert _handshake(credentials.context, server_context(pki)) == "baton-worker"


def test_faust_ssl_context_without_certificate_is_refused_by_an_mtls_server(pki: Pki) -> None:
    credentials = _faust_credentials(Settings(security_protocol="SSL", ssl_cafile=pki.ca))
    with pytest.raises((ssl.SSLError, OSError)):
        _handshake(credentials.context, server_context(pki))


def test_faust_ssl_context_refuses_a_server_of_another_ca(pki: Pki) -> None:
    credentials = _faust_credentials(Settings(**_mtls(pki, ssl_cafile=pki.stranger_ca)))
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(credentials.context, server_context(pki))


def test_faust_sasl_credentials_carry_user_mechanism_and_tls(pki: Pki) -> None:
    from faust.auth import SASLCredentials

    sasl = {"sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "baton", "sasl_password": SECRET}
    over_tls = _faust_credentials(Settings(**_mtls(pki, security_protocol="SASL_SSL"), **sasl))
    assert isinstance(over_tls, SASLCredentials)
    assert over_tls.protocol.value == "SASL_SSL" and over_tls.mechanism.value == "SCRAM-SHA-256"
    assert (over_tls.username, over_tls.password) == ("baton", SECRET)
    assert _handshake(over_tls.ssl_context, server_context(pki)) == "baton-worker"
    assert SECRET not in repr(over_tls)
    clear = _faust_credentials(Settings(security_protocol="SASL_PLAINTEXT", **sasl))
    assert clear.protocol.value == "SASL_PLAINTEXT" and clear.ssl_context is None
    assert _faust_credentials(Settings()) is None


# --- refused at settings time, one line naming the setting and its variable -------------------
def test_certificate_without_key_is_refused(pki: Pki) -> None:
    message = _refused(security_protocol="SSL", ssl_certfile=pki.client_cert)
    assert "ssl_certfile (BATON_SSL_CERTFILE)" in message
    assert "ssl_keyfile (BATON_SSL_KEYFILE) is not" in message


def test_key_without_certificate_and_password_without_key_are_refused(pki: Pki) -> None:
    assert "needs its client certificate" in _refused(
        security_protocol="SSL", ssl_keyfile=pki.client_key
    )
    message = _refused(security_protocol="SSL", ssl_key_password=SECRET)
    assert "ssl_key_password (BATON_SSL_KEY_PASSWORD) is set" in message
    assert SECRET not in message


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_tls_files_with_a_protocol_without_tls_are_refused(pki: Pki, protocol: str) -> None:
    extra = (
        {"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": SECRET}
        if protocol.startswith("SASL")
        else {}
    )
    message = _refused(**_mtls(pki, security_protocol=protocol), **extra)
    for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password"):
        assert f"{field} (BATON_{field.upper()}) is set but security_protocol" in message
    assert f"is {protocol}: the connection would not use TLS" in message
    assert f"BATON_SECURITY_PROTOCOL={protocol.replace('PLAINTEXT', 'SSL')}" in message
    assert SECRET not in message and pki.client_key_password not in message


def test_sasl_credentials_with_a_protocol_without_sasl_are_refused() -> None:
    message = _refused(security_protocol="PLAINTEXT", sasl_username="u", sasl_password=SECRET)
    assert "sasl_username (BATON_SASL_USERNAME) is set" in message
    assert "sasl_password (BATON_SASL_PASSWORD) is set" in message
    assert "would never be sent" in message and SECRET not in message


def test_sasl_protocol_without_mechanism_user_or_password_is_refused() -> None:
    message = _refused(security_protocol="SASL_SSL")
    for field in ("sasl_mechanism", "sasl_username", "sasl_password"):
        assert f"{field} (BATON_{field.upper()}) is not set" in message
    assert "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512" in message
    # an empty password (BATON_SASL_PASSWORD="") is no password
    assert "sasl_password" in _refused(
        security_protocol="SASL_SSL", sasl_mechanism="PLAIN", sasl_username="u", sasl_password=""
    )


@pytest.mark.parametrize("field", ["ssl_cafile", "ssl_certfile", "ssl_keyfile"])
def test_missing_tls_file_is_refused_with_its_path(pki: Pki, field: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    message = _refused(**{**_mtls(pki), field: missing})
    assert f"{field} (BATON_{field.upper()}): {missing} does not exist" in message


def test_directory_fifo_huge_and_non_pem_files_are_refused_without_blocking(
    pki: Pki, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it would block forever: it must be refused from stat alone
    huge = tmp_path / "huge.pem"
    with huge.open("wb") as f:
        f.truncate(5 * 1024 * 1024)
    not_pem = tmp_path / "cert.der"
    not_pem.write_bytes(b"\x30\x82\x01\x0a" * 50)
    cases = {
        tmp_path: "is a directory",
        fifo: "is not a regular file",
        huge: "holds 5242880 bytes (over 4194304)",
        not_pem: "holds no 'BEGIN CERTIFICATE' block",
    }
    for path, expected in cases.items():
        message = _refused(**_mtls(pki, ssl_certfile=path))
        assert f"ssl_certfile (BATON_SSL_CERTFILE): {path} {expected}" in message, message
    # a certificate where the key belongs: no private key in it
    assert "holds no 'PRIVATE KEY' block" in _refused(**_mtls(pki, ssl_keyfile=pki.client_cert))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_key_is_refused(pki: Pki, tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(pki.client_key.read_bytes())
    key.chmod(0)
    assert "is not readable by this process" in _refused(**_mtls(pki, ssl_keyfile=key))


def test_key_of_another_certificate_is_refused(pki: Pki) -> None:
    message = _refused(**_mtls(pki, ssl_keyfile=pki.stranger_key, ssl_key_password=None))
    assert f"{pki.stranger_key} is not the private key of ssl_certfile" in message


def test_encrypted_key_without_password_is_refused_not_prompted_for(pki: Pki) -> None:
    # without a password callback OpenSSL would prompt on the terminal: a worker would hang
    message = _refused(**_mtls(pki, ssl_key_password=None))
    assert f"ssl_keyfile (BATON_SSL_KEYFILE): {pki.client_key_encrypted} is encrypted" in message
    assert "BATON_SSL_KEY_PASSWORD" in message


def test_wrong_key_password_is_refused_without_showing_it(pki: Pki) -> None:
    message = _refused(**_mtls(pki, ssl_key_password=SECRET))
    assert "ssl_key_password (BATON_SSL_KEY_PASSWORD): does not decrypt" in message
    assert SECRET not in message


def test_a_ca_file_that_is_not_a_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    broken = tmp_path / "ca.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    message = _refused(**_mtls(pki, ssl_cafile=broken))
    assert f"ssl_cafile (BATON_SSL_CAFILE): cannot load {broken} as CA certificates" in message


def test_environment_variables_configure_mtls(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _mtls(pki).items():
        monkeypatch.setenv(f"BATON_{key.upper()}", str(value))
    conf = Settings().kafka_config()
    assert conf["ssl.key.password"] == pki.client_key_password
    assert conf["ssl.certificate.location"] == str(pki.client_cert)


# --- ClickHouse over HTTPS ---------------------------------------------------------------------
def test_clickhouse_ca_is_checked_like_the_kafka_files(pki: Pki, tmp_path: Path) -> None:
    https = "https://baton:pw@ch.internal:8443/default"
    ok = Settings(clickhouse_dsn=https, clickhouse_ca=pki.ca, clickhouse_verify=True)
    assert ok.clickhouse_ca == pki.ca
    assert "clickhouse_ca (BATON_CLICKHOUSE_CA): " in _refused(
        clickhouse_dsn=https, clickhouse_ca=tmp_path / "missing.pem"
    )
    assert "holds no 'BEGIN CERTIFICATE' block" in _refused(
        clickhouse_dsn=https, clickhouse_ca=pki.client_key
    )


def test_clickhouse_ca_with_a_remote_http_dsn_is_refused(pki: Pki) -> None:
    message = _refused(clickhouse_dsn=f"http://baton:{SECRET}@ch:8123/db", clickhouse_ca=pki.ca)
    assert "clickhouse_ca (BATON_CLICKHOUSE_CA) is set but clickhouse_dsn" in message
    assert "without TLS" in message and SECRET not in message
    # the local SQL endpoint of `baton up` is plain HTTP on loopback: allowed
    Settings(clickhouse_dsn="http://baton:tok@127.0.0.1:8123", clickhouse_ca=pki.ca)


# --- secrets never printed ---------------------------------------------------------------------
def test_repr_and_str_of_settings_show_no_secret(pki: Pki) -> None:
    secret_fields = {
        name: SECRET + name
        for name, info in Settings.model_fields.items()
        if "SecretStr" in str(info.annotation)
    }
    assert {"sasl_password", "ssl_key_password", "webhook_url"} <= set(secret_fields)
    secret_fields["ssl_key_password"] = pki.client_key_password
    secret_fields.pop("sasl_password")
    s = Settings(
        **_mtls(pki, security_protocol="SASL_SSL"),
        sasl_mechanism="PLAIN",
        sasl_username="baton",
        sasl_password=SECRET,
        clickhouse_dsn=f"https://baton:{SECRET}@ch:8443/db",
        **{k: v for k, v in secret_fields.items() if k != "ssl_key_password"},
    )
    shown = repr(s) + str(s) + repr(ClientOptions.resolve(settings=s))
    assert SECRET not in shown and pki.client_key_password not in shown
    assert "https://baton:***@ch:8443/db" in shown
    assert "'sasl.password': '***'" in shown and "'ssl.key.password': '***'" in shown


def test_printable_config_masks_every_password_property() -> None:
    conf = {
        "bootstrap.servers": "k:9092",
        "sasl.password": SECRET,
        "ssl.key.password": SECRET,
        "sasl.oauthbearer.client.secret": SECRET,
        "error_cb": print,
    }
    shown = printable_config(conf)
    assert SECRET not in repr(shown) and "error_cb" not in shown
    assert shown["bootstrap.servers"] == "k:9092"


def test_clickhouse_dsn_error_masks_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_dsn(f"ftp://baton:{SECRET}@host:21/db")
    assert SECRET not in str(info.value) and "ftp://baton:***@host:21/db" in str(info.value)
    assert SECRET not in parse_dsn(f"https://baton:{SECRET}@host:8443/db").label


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("http://baton:pw@h:8123/db", "http://baton:***@h:8123/db"),
        ("https://u:p@ss:w/rd@h/db", "https://u:***@h/db"),
        ("a http://x:1@h and https://y:2@k/", "a http://x:***@h and https://y:***@k/"),
        ("http://h:8123/?user=u&password=pw&x=1", "http://h:8123/?user=u&password=***&x=1"),
        ("http://h/?access_token=tok", "http://h/?access_token=***"),
        ("http://u@h:8123/db", "http://u@h:8123/db"),
        ("chdb:///var/lib/baton", "chdb:///var/lib/baton"),
        ("cannot reach Kafka at 127.0.0.1:9092", "cannot reach Kafka at 127.0.0.1:9092"),
    ],
)
def test_mask_credentials(text: str, masked: str) -> None:
    assert mask_credentials(text) == masked


def test_secret_settings_are_secretstr() -> None:
    for name in ("sasl_password", "ssl_key_password", "webhook_url"):
        assert Settings.model_fields[name].annotation == SecretStr | None, name


def test_a_password_given_as_a_dsn_parameter_is_refused_masked() -> None:
    from baton.sinks.clickhouse import connect

    # clickhouse-connect would raise a bare TypeError (password given twice); no network used
    with pytest.raises(ConfigError) as info:
        connect(f"http://127.0.0.1:1/default?password={SECRET}")
    assert "clickhouse_dsn (BATON_CLICKHOUSE_DSN)" in str(info.value)
    assert SECRET not in str(info.value) and info.value.__cause__ is None


def test_a_parsed_dsn_prints_as_its_masked_label() -> None:
    target = parse_dsn(f"https://baton:{SECRET}@ch:8443/db")
    assert SECRET not in repr(target) and "https://baton:***@ch:8443/db" in repr(target)


@pytest.mark.parametrize(
    ("dsn", "says"),
    [
        ("http://alice:s3cret@" + "h" * 60_000 + ":1", "a host name of 60000 characters"),
        ("http://alice:s3cret@" + "a" * 300 + ":1", "a host name of 300 characters"),
        ("chdb://alice:s3cret@/tmp/x", "a chdb DSN names a directory and takes no user"),
    ],
    ids=["60kb-host", "host-over-253", "chdb-with-credentials"],
)
def test_a_dsn_the_audit_cannot_use_is_refused_short_and_without_its_password(
    dsn: str, says: str
) -> None:
    """A 60 KB host made a 60 KB error line, one past DNS's 253 characters ended in urllib3's
    repr, and a chdb path holding user:pass@ was echoed with the password (H4, session 12)."""
    with pytest.raises(ConfigError) as refused:
        parse_dsn(dsn)
    text = str(refused.value)
    assert says in text and "s3cret" not in text and len(text) < 300
    assert parse_dsn("chdb:///tmp/x@y").label == "chdb:/tmp/x@y"  # an @ in a directory is fine
