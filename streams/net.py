"""Plain TCP helpers: a free port for processes we start, whether a Kafka address answers, and
the bound on the connections a threading server of ours serves at once."""

from __future__ import annotations

import ipaddress
import random
import socket
import threading
import time
from typing import Any

from baton.schemas.errors import BrokerUnavailable, ConfigError

__all__ = [
    "BoundedConnections",
    "check_reachable",
    "free_port",
    "parse_bootstrap",
    "peer_of",
    "shown_bootstrap",
]

_KAFKA_PORT = 9092


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The port is released before returning, so another process may grab it before the
    caller binds it; callers that start a server on it should retry with a new port when
    the bind fails (``EmbeddedBroker`` does). Picked below the kernel's ephemeral range
    (``net.ipv4.ip_local_port_range``) where it can: a port of that range, once released, can
    become the local port of any outgoing connection, and a `baton up` sink whose metrics
    port a Kafka connection took so never started (every restart given the same port).
    """
    low = _ephemeral_low()
    for _ in range(64):
        port = random.randrange(_LOWEST, low) if low > _LOWEST else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


#: the lowest port :func:`free_port` picks (below: the well-known and registered services
#: machines tend to run, 8123 and 9092 among them)
_LOWEST = 10_000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """``(host, port)`` of every address in a ``bootstrap.servers`` list.

    Accepts what librdkafka accepts: ``host``, ``host:port``, ``[v6]:port`` and a
    ``PROTOCOL://`` prefix; the port defaults to 9092. Raises ``ConfigError`` naming the bad
    entry otherwise.
    """
    addresses = []
    for raw in bootstrap.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if "://" in entry:
            entry = entry.split("://", 1)[1]
        host, port_text = entry, ""
        if entry.startswith("["):  # [::1]:9092
            host, _, rest = entry[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else rest
        elif entry.count(":") == 1:
            host, port_text = entry.split(":")
        # ASCII digits only: int() also reads '９０９２' (fullwidth), ' 9092', '+9092' and
        # '9_092', which librdkafka reads as port 0 or 9 (aiokafka as 9092)
        if not port_text:
            port = _KAFKA_PORT
        elif port_text.isascii() and port_text.isdigit() and len(port_text) <= 5:
            port = int(port_text)
        else:
            port = -1
        if not host or not 0 < port < 65536:
            raise ConfigError(
                f"bootstrap (BATON_BOOTSTRAP): {raw.strip()!r} is not a Kafka address, "
                "expected HOST:PORT (comma-separated for several)"
            )
        addresses.append((host, port))
    if not addresses:
        raise ConfigError(
            f"bootstrap (BATON_BOOTSTRAP): no address in {bootstrap!r}, expected HOST:PORT"
        )
    return addresses


def shown_bootstrap(text: str, limit: int = 200) -> str:
    """``text`` (a bootstrap list, or librdkafka's words naming its addresses) cut to
    ``limit`` characters for an error line: a 60 KB host name made a 60 KB error."""
    return text if len(text) <= limit else f"{text[:limit]}…"


#: the addresses a BrokerUnavailable names one by one (a bootstrap of 300 made a 17 KB line)
_SHOWN_PROBLEMS = 5


def check_reachable(bootstrap: str, timeout_s: float = 10.0) -> None:
    """Return once one address of ``bootstrap`` accepts a TCP connection, else raise
    ``BrokerUnavailable`` naming every address and why.

    A refused connection answers at once, so a command pointed at a dead port fails in
    milliseconds instead of waiting out the Kafka client's timeout; an address that does not
    answer at all costs its share of ``timeout_s``. Not guaranteed: that what accepts is a
    Kafka broker, or that it is still there a moment later (the Kafka client's own errors
    cover that).
    """
    addresses = parse_bootstrap(bootstrap)
    deadline = time.monotonic() + timeout_s
    problems = []
    for i, (host, port) in enumerate(addresses):
        if i and time.monotonic() >= deadline:  # a name lookup is not bounded by the share:
            break  # 300 names that do not resolve took 56 s under a 10 s timeout
        share = max(deadline - time.monotonic(), 0.0) / (len(addresses) - i)
        name = shown_bootstrap(host, 100)  # (a 60 KB name: a 60 KB line)
        try:
            with socket.create_connection((host, port), timeout=max(share, 0.05)):
                return
        except TimeoutError:
            problems.append(f"{name}:{port}: no answer within {share:.1f} s")
        except socket.gaierror as exc:
            problems.append(f"{name}:{port}: cannot resolve {name!r} ({exc.strerror})")
        except UnicodeError as exc:  # a label over 63 characters, or empty: idna refuses it
            problems.append(f"{name}:{port}: not a host name ({str(exc)[:80]})")
        except OSError as exc:
            problems.append(f"{name}:{port}: {(exc.strerror or str(exc)).lower()}")
    shown = "; ".join(problems[:_SHOWN_PROBLEMS])
    if len(addresses) > _SHOWN_PROBLEMS:
        shown += f"; {len(addresses)} addresses, {len(problems)} tried within {timeout_s:g} s"
    where = shown_bootstrap(bootstrap)
    raise BrokerUnavailable(f"cannot reach Kafka at {where} ({shown}); is the broker running?")


def peer_of(address: str) -> str:
    """The peer a connection from ``address`` counts against: the address, except where one
    client may pick among many. Every 127.x.x.x is the loopback of one host (a local process
    chose 127.0.0.2, .3, ... and took a share with each), an IPv6 client's /64 is its own to
    number, and an IPv4 address mapped into IPv6 (a dual-stack socket) is that IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        return "127.0.0.0/8" if ip.is_loopback else str(ip)
    if ip.is_loopback:
        return str(ip)
    return str(ipaddress.IPv6Network((ip, 64), strict=False))


class BoundedConnections:
    """A ``socketserver`` mixin (before ``ThreadingMixIn``): at most ``max_connections``
    connections served at once, and at most ``max_per_peer`` from one peer (``peer_of``;
    None: no such bound); the others are closed unread (a client tries again). Each served
    connection holds a thread of the process for as long as it stays open: without a bound,
    idle or trickling clients held as many as they opened (/metrics, session 10; the SQL
    endpoint, session 17)."""

    max_connections: int = 0
    max_per_peer: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._held = 0
        self._per_peer: dict[str, int] = {}
        self._held_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        peer = peer_of(str(client_address[0])) if client_address else ""
        with self._held_lock:
            mine = self._per_peer.get(peer, 0)
            bound = self.max_per_peer
            if self._held >= self.max_connections or (bound is not None and mine >= bound):
                self.shutdown_request(request)  # type: ignore[attr-defined]
                return
            self._held += 1
            self._per_peer[peer] = mine + 1
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        except BaseException:  # no thread started (none left): its slot is free again
            self._release(peer)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self._release(peer_of(str(client_address[0])) if client_address else "")

    def _release(self, peer: str) -> None:
        with self._held_lock:
            self._held -= 1
            left = self._per_peer.pop(peer, 1) - 1
            if left > 0:
                self._per_peer[peer] = left
