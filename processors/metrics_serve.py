"""Serves Prometheus collectors on ``/metrics`` from a thread, where the settings say."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.registry import Collector

from baton.schemas.errors import ConfigError
from baton.schemas.settings import Settings
from baton.streams.net import BoundedConnections

__all__ = ["MetricsEndpoint", "new_registry", "serve_from_settings", "serve_metrics"]

log = logging.getLogger("baton.metrics")

#: a connection that sends nothing for this long is closed (a scrape sends its request at
#: once), and at most MAX_CONNECTIONS are served at a time, the others closed unread: each
#: held a thread (and a descriptor) of the worker for as long as it stayed open, idle forever
#: (700 idle connections were 700 threads)
IDLE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 32
#: at most this many of them from one peer address: clients of one host that reconnected at
#: once held all 32, and no scrape from elsewhere was answered (a Prometheus server scrapes
#: over one connection at a time; `baton top` and a curl are two more)
MAX_PER_PEER = 4
#: a whole request (read, answered, sent) gets this long from its connection: a client that
#: trickled a byte every few seconds was never idle, and 32 of them held every slot, so no
#: scrape was answered
REQUEST_DEADLINE_S = 10.0
#: the most bytes read of a request (its line and headers; a scrape sends well under 1 KB):
#: http.server took 100 header lines of 64 KB each, 6.5 MB held per connection
MAX_REQUEST_BYTES = 64 * 1024


def new_registry(*collectors: Collector) -> CollectorRegistry:
    """A registry of ``collectors`` plus the process' memory, CPU and GC figures."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    for collector in collectors:
        registry.register(collector)
    return registry


@dataclass
class MetricsEndpoint:
    """A running /metrics HTTP server."""

    url: str
    _server: Any

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _DeadlineReader(io.RawIOBase):
    """A connection's bytes until its deadline (then TimeoutError) and at most ``limit`` of
    them (then end of file). Each read waits the idle timeout at most, and never past the
    deadline."""

    def __init__(self, sock: socket.socket, deadline: float, idle_s: float, limit: int) -> None:
        super().__init__()
        self._sock, self._deadline, self._idle_s, self._left = sock, deadline, idle_s, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            return 0
        self._sock.settimeout(_time_left(self._deadline, self._idle_s))
        view = memoryview(buffer).cast("B")
        n = self._sock.recv_into(view[: min(len(view), self._left)])
        self._left -= n
        return n


class _DeadlineWriter(io.BufferedIOBase):
    """Sends the answer, all of it before the connection's deadline (socketserver's unbuffered
    writer, with the deadline: a client that reads slowly does not hold its slot either)."""

    def __init__(self, sock: socket.socket, deadline: float, idle_s: float) -> None:
        super().__init__()
        self._sock, self._deadline, self._idle_s = sock, deadline, idle_s

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.settimeout(_time_left(self._deadline, self._idle_s))
        self._sock.sendall(data)  # its timeout bounds the whole send (Python >= 3.5)
        with memoryview(data) as view:
            return view.nbytes


def _time_left(deadline: float, idle_s: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the /metrics request took past its deadline")
    return min(left, idle_s)


class _QuietHandler(WSGIRequestHandler):
    """Serves one request (wsgiref's handler serves one per connection), logging nothing,
    within its deadline and reading at most MAX_REQUEST_BYTES."""

    def setup(self) -> None:
        server: Any = self.server
        self.timeout = server.idle_timeout_s
        super().setup()
        deadline = time.monotonic() + server.request_deadline_s
        self.rfile.close()  # the socket's own file: it would keep the socket open
        self.rfile = io.BufferedReader(
            _DeadlineReader(self.connection, deadline, server.idle_timeout_s, MAX_REQUEST_BYTES)
        )
        self.wfile = _DeadlineWriter(self.connection, deadline, server.idle_timeout_s)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _BoundedServer(BoundedConnections, ThreadingMixIn, WSGIServer):
    """A thread per connection, at most ``MAX_CONNECTIONS`` of them and ``MAX_PER_PEER`` from
    one address (``streams.net.BoundedConnections``); errors never printed."""

    daemon_threads = True

    def __init__(self, host: str, port: int) -> None:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self.address_family = family  # read when the socket is made, in __init__
        self.idle_timeout_s = IDLE_TIMEOUT_S
        self.request_deadline_s = REQUEST_DEADLINE_S
        self.max_connections = MAX_CONNECTIONS
        self.max_per_peer = MAX_PER_PEER
        super().__init__(address[:2], _QuietHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("a /metrics connection ended in an error", exc_info=True)


def _only_metrics(app: Any) -> Any:
    """``app`` on /metrics, 404 on every other path (prometheus_client answers the metrics on
    any path but /favicon.ico: a probe of /, /admin or /.env read the worker's figures)."""

    def only_metrics(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO", "") in ("/metrics", "/metrics/"):
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: Baton serves its metrics on /metrics\n"]

    return only_metrics


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> MetricsEndpoint:
    """Serve ``registry`` on http://host:port/metrics (port 0: a free one) from a thread."""
    try:
        server = _BoundedServer(host, port)
    # OSError: a port in use, or a host name that is not this machine's; UnicodeError: a host
    # name IDNA cannot encode (a label past 63 characters); OverflowError: a port past 65535
    except (OSError, UnicodeError, OverflowError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise ConfigError(
            f"metrics_host/metrics_port (BATON_METRICS_HOST/BATON_METRICS_PORT): cannot listen "
            f"on {host[:100]!r} port {port}: {why}; expected an address of this machine and "
            "a free port (0 = any, off = no metrics)"
        ) from None
    server.set_app(_only_metrics(make_wsgi_app(registry)))
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return MetricsEndpoint(f"http://{shown}:{server.server_port}/metrics", server)


def serve_from_settings(settings: Settings, *collectors: Collector) -> MetricsEndpoint | None:
    """Serve ``collectors`` on the settings' metrics host and port; None when metrics are off."""
    port = settings.metrics_port_number
    if port is None:
        return None
    return serve_metrics(new_registry(*collectors), settings.metrics_host, port)
