"""Connection settings checked before anything connects: Kafka TLS and SASL, ClickHouse TLS.

``connection_problems(settings)`` lists, one line each, every setting that would make a
connection fail later or - worse - quietly weaker than its owner meant: a CA or client
certificate with a protocol that does not use TLS (the traffic would be clear text), SASL
credentials with a protocol that never sends them, a certificate without its key, a key
its password does not open, a file that is missing, unreadable or not PEM. Each line names
the setting, its ``BATON_*`` variable, the value and what was expected. ``Settings`` raises
them as one ConfigError.

``checked_bootstrap`` refuses a Kafka bootstrap that carries credentials (``USER:PASSWORD@HOST``).

``client_ssl_context`` builds the ``ssl.SSLContext`` that Faust's aiokafka connections use,
from the same files librdkafka is given, so both kinds of client present the same identity.

Not checked here: that the broker or server accepts the certificate (that is a connection
error, reported when connecting), certificate expiry, and the key file's permissions.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from baton.schemas.errors import ConfigError

if TYPE_CHECKING:
    from baton.schemas.settings import Settings

__all__ = [
    "MAX_PEM_BYTES",
    "checked_bootstrap",
    "client_ssl_context",
    "connection_problems",
    "kafka_config",
]

#: a certificate, key or CA bundle is a few KB (the Mozilla bundle ~220 KB); more is a wrong path
MAX_PEM_BYTES = 4 * 1024 * 1024

_CERT = "-----BEGIN CERTIFICATE-----"
_KEY = "PRIVATE KEY-----"  # PRIVATE KEY, RSA/EC PRIVATE KEY, ENCRYPTED PRIVATE KEY


def checked_bootstrap(value: str) -> str:
    """``value`` unless an address in it holds '@' (``USER:PASSWORD@HOST``, a URL's
    credentials), else a ValueError that does not repeat it: librdkafka took the whole as a
    host name, and every error and each of its log lines (the SDK's, ~20 a second) printed
    the password."""
    if "@" in value or any(_credentials_like(a) for a in value.split(",")):
        raise ValueError(
            "an address holds '@' or is USER:PASSWORD...[:PORT] (a ':' too many and no IPv6 "
            "address, or a port that is no number): the bootstrap is HOST:PORT only "
            "(comma-separated, IPv6 as [ADDR]:PORT); "
            "the Kafka user and password go in BATON_SASL_USERNAME and BATON_SASL_PASSWORD"
        )
    return value


def _credentials_like(address: str) -> bool:
    """An address of more than one ':' that is no IPv6 address (bare, as librdkafka and
    streams.net take it): ``alice:s3cret＠host:9092`` or ``alice:s3cret%40host:9092`` (an '@'
    of another code point, or escaped) passed the '@' test, and every error printed it; or of
    one ':' and no number after it (``alice:s3cret＠host``: streams.net's 'not a Kafka
    address' printed it)."""
    entry = address.strip().rpartition("://")[2]
    if entry.count(":") == 1:  # alice:s3cret＠host: a password where the port goes
        port = entry.partition(":")[2]
        return bool(port) and not (port.isascii() and port.isdigit())  # not '９０９２'
    if entry.count(":") < 2 or entry.startswith("["):
        return False
    try:
        ipaddress.IPv6Address(entry.partition("%")[0])  # fe80::1%eth0: a zone
    except ValueError:
        return True
    return False


def _name(field: str) -> str:
    return f"{field} (BATON_{field.upper()})"


def connection_problems(s: Settings) -> list[str]:
    """Every problem with the connection settings of ``s``, one line each (empty: fine)."""
    problems = _kafka_problems(s)
    problems += _clickhouse_problems(s)
    return problems


def kafka_config(s: Settings) -> dict[str, str]:
    """librdkafka properties shared by every confluent-kafka client we create."""
    conf: dict[str, str] = {
        "bootstrap.servers": s.bootstrap,
        "security.protocol": s.security_protocol,
    }
    if s.sasl_mechanism:
        conf["sasl.mechanism"] = s.sasl_mechanism
    if s.sasl_username:
        conf["sasl.username"] = s.sasl_username
    if s.sasl_password:
        conf["sasl.password"] = s.sasl_password.get_secret_value()
    if s.ssl_cafile:
        conf["ssl.ca.location"] = str(s.ssl_cafile)
    if s.ssl_certfile:  # mTLS: the broker checks this certificate against its CA
        conf["ssl.certificate.location"] = str(s.ssl_certfile)
    if s.ssl_keyfile:
        conf["ssl.key.location"] = str(s.ssl_keyfile)
    if s.ssl_key_password and s.ssl_key_password.get_secret_value():
        conf["ssl.key.password"] = s.ssl_key_password.get_secret_value()
    return conf


def _kafka_problems(s: Settings) -> list[str]:
    problems: list[str] = []
    protocol = s.security_protocol
    key_password = _secret(s.ssl_key_password)
    tls_fields = {
        "ssl_cafile": s.ssl_cafile,
        "ssl_certfile": s.ssl_certfile,
        "ssl_keyfile": s.ssl_keyfile,
        "ssl_key_password": key_password,
    }
    if "SSL" not in protocol:
        fix = protocol.replace("PLAINTEXT", "SSL")
        problems += _unused(tls_fields, protocol, "the connection would not use TLS", fix)
    sasl_fields = {
        "sasl_mechanism": s.sasl_mechanism,
        "sasl_username": s.sasl_username,
        "sasl_password": _secret(s.sasl_password),
    }
    if protocol.startswith("SASL_"):
        for field, value in sasl_fields.items():
            if not value:
                expected = (
                    "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                    if field == "sasl_mechanism"
                    else "the Kafka user's " + field.removeprefix("sasl_")
                )
                problems.append(
                    f"{_name(field)} is not set but security_protocol (BATON_SECURITY_PROTOCOL) "
                    f"is {protocol}: expected {expected}"
                )
    else:
        never_sent = "the credentials would never be sent"
        problems += _unused(sasl_fields, protocol, never_sent, "SASL_SSL")
    if s.ssl_certfile and not s.ssl_keyfile:
        problems.append(
            f"{_name('ssl_certfile')} is set but {_name('ssl_keyfile')} is not: a client "
            "certificate needs its private key (PEM)"
        )
    if s.ssl_keyfile and not s.ssl_certfile:
        problems.append(
            f"{_name('ssl_keyfile')} is set but {_name('ssl_certfile')} is not: a private key "
            "needs its client certificate (PEM)"
        )
    if key_password and not s.ssl_keyfile:
        problems.append(
            f"{_name('ssl_key_password')} is set but {_name('ssl_keyfile')} is not: "
            "it decrypts that key"
        )
    files_ok = True
    for field, path, marker, what in (
        ("ssl_cafile", s.ssl_cafile, _CERT, "the CA certificate(s) that signed the brokers'"),
        ("ssl_certfile", s.ssl_certfile, _CERT, "Baton's client certificate"),
        ("ssl_keyfile", s.ssl_keyfile, _KEY, "the private key of ssl_certfile"),
    ):
        if path is not None:
            problem = _pem_file_problem(field, path, marker, what)
            if problem:
                problems.append(problem)
                files_ok = False
    if files_ok and not problems and "SSL" in protocol:
        try:
            client_ssl_context(s.ssl_cafile, s.ssl_certfile, s.ssl_keyfile, key_password)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def _unused(fields: dict[str, object], protocol: str, why: str, fix: str) -> list[str]:
    """One line per field that is set although ``protocol`` would not use it."""
    return [
        f"{_name(field)} is set but security_protocol (BATON_SECURITY_PROTOCOL) is {protocol}: "
        f"{why}; set BATON_SECURITY_PROTOCOL={fix}"
        for field, value in fields.items()
        if value
    ]


def _clickhouse_problems(s: Settings) -> list[str]:
    ca = s.clickhouse_ca
    if ca is None:
        return []
    problem = _pem_file_problem(
        "clickhouse_ca", ca, _CERT, "the CA certificate(s) that signed the ClickHouse server's"
    )
    if problem:
        return [problem]
    try:
        ssl.create_default_context(cafile=str(ca))
    except (ssl.SSLError, ValueError) as exc:
        return [f"{_name('clickhouse_ca')}: cannot load {ca} as CA certificates: {_reason(exc)}"]
    parts = urlsplit(s.clickhouse_dsn)
    if parts.scheme == "http" and not _is_loopback(parts.hostname or ""):
        return [
            f"{_name('clickhouse_ca')} is set but clickhouse_dsn (BATON_CLICKHOUSE_DSN) is "
            f"http://{parts.hostname}…: the password and the audit would cross the network "
            "without TLS; use an https:// DSN (the ClickHouse server's https_port, 8443)"
        ]
    return []


def client_ssl_context(
    cafile: Path | None,
    certfile: Path | None,
    keyfile: Path | None,
    key_password: str | None,
) -> ssl.SSLContext:
    """A TLS client context: the brokers checked against ``cafile`` (the system's CAs when
    None), host names verified, and ``certfile``/``keyfile`` presented when the broker asks for
    a client certificate (mTLS). Raises ConfigError naming the setting at fault."""
    try:
        ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"{_name('ssl_cafile')}: cannot load {cafile} as CA certificates: {_reason(exc)}"
        ) from None
    if certfile is None:
        return ctx
    asked = False

    def password() -> str:
        # called only when the key is encrypted; without this, OpenSSL would prompt on the
        # terminal and a worker would hang at start-up
        nonlocal asked
        asked = True
        if not key_password:
            raise ConfigError(
                f"{_name('ssl_keyfile')}: {keyfile} is encrypted but {_name('ssl_key_password')} "
                "is not set"
            )
        return key_password

    try:
        ctx.load_cert_chain(str(certfile), str(keyfile) if keyfile else None, password=password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"{_name('ssl_keyfile')}: {keyfile} is not the private key of "
                f"{_name('ssl_certfile')} {certfile}"
            ) from None
        if asked:
            raise ConfigError(
                f"{_name('ssl_key_password')}: does not decrypt {_name('ssl_keyfile')} "
                f"{keyfile} (wrong password?)"
            ) from None
        raise ConfigError(
            f"{_name('ssl_certfile')}/{_name('ssl_keyfile')}: cannot load {certfile} and "
            f"{keyfile} as a PEM certificate and its key: {_reason(exc)}"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"{_name('ssl_certfile')}/{_name('ssl_keyfile')}: cannot read {certfile} or "
            f"{keyfile}: {exc.strerror or exc}"
        ) from None
    return ctx


def _pem_file_problem(field: str, path: Path, marker: str, what: str) -> str | None:
    """Why ``path`` cannot serve as ``field`` (a readable PEM file holding ``marker``), or None.

    Checked with stat before opening: a FIFO named by mistake would block the open forever.
    """
    expected = f"expected {what} (PEM)"
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{_name(field)}: {path} does not exist; {expected}"
    except OSError as exc:
        return f"{_name(field)}: cannot reach {path}: {exc.strerror or exc}; {expected}"
    if stat.S_ISDIR(st.st_mode):
        return f"{_name(field)}: {path} is a directory; {expected}"
    if not stat.S_ISREG(st.st_mode):
        return f"{_name(field)}: {path} is not a regular file; {expected}"
    if st.st_size > MAX_PEM_BYTES:
        return f"{_name(field)}: {path} holds {st.st_size} bytes (over {MAX_PEM_BYTES}); {expected}"
    if not os.access(path, os.R_OK):
        return f"{_name(field)}: {path} is not readable by this process (uid {os.getuid()})"
    try:
        text = path.read_bytes().decode("ascii", errors="replace")
    except OSError as exc:
        return f"{_name(field)}: cannot read {path}: {exc.strerror or exc}"
    if marker not in text:
        shown = marker.strip("-")
        return f"{_name(field)}: {path} holds no '{shown}' block; {expected}"
    return None


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else (getattr(exc, "strerror", None) or str(exc))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secret(value: object) -> str | None:
    """The text of a SecretStr (None when unset or empty: an empty variable means unset)."""
    if value is None:
        return None
    text = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    return text or None
