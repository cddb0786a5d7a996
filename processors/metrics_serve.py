"""Serves Prometheus collectors on ``/metrics`` from a thread, where the settings say."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.registry import Collector

from baton.schemas.errors import ConfigError
from baton.schemas.settings import Settings

__all__ = ["MetricsEndpoint", "new_registry", "serve_from_settings", "serve_metrics"]


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


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> MetricsEndpoint:
    """Serve ``registry`` on http://host:port/metrics (port 0: a free one) from a thread."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    # OSError: a port in use, or a host name that is not this machine's; UnicodeError: a host
    # name IDNA cannot encode (a label past 63 characters); OverflowError: a port past 65535
    except (OSError, UnicodeError, OverflowError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise ConfigError(
            f"metrics_host/metrics_port (BATON_METRICS_HOST/BATON_METRICS_PORT): cannot listen "
            f"on {host[:100]!r} port {port}: {why}; expected an address of this machine and "
            "a free port (0 = any, off = no metrics)"
        ) from None
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return MetricsEndpoint(f"http://{shown}:{server.server_port}/metrics", server)


def serve_from_settings(settings: Settings, *collectors: Collector) -> MetricsEndpoint | None:
    """Serve ``collectors`` on the settings' metrics host and port; None when metrics are off."""
    port = settings.metrics_port_number
    if port is None:
        return None
    return serve_metrics(new_registry(*collectors), settings.metrics_host, port)
