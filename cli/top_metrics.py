"""``baton top``'s /metrics side: one bounded scrape of an endpoint, its histograms' quantiles."""

from __future__ import annotations

import http.client
import math
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from baton.schemas.errors import ConfigError
from baton.sinks.alert_text import clean_field

__all__ = ["MetricsView", "check_metrics_url", "quantile", "scrape"]

#: a /metrics page of ours is a few KB; past this it is not ours
_MAX_METRICS_BYTES = 4 * 1024 * 1024
_SCRAPE_TIMEOUT_S = 2.0


@dataclass
class MetricsView:
    """One scrape of a /metrics endpoint: samples by name, with their labels."""

    url: str
    at: float
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    error: str | None = None

    def total(self, name: str) -> float | None:
        values = self.samples.get(name)
        return None if values is None else sum(v for _labels, v in values)

    def by_label(self, name: str, label: str) -> list[tuple[str, float]]:
        return sorted((labels.get(label, ""), v) for labels, v in self.samples.get(name, ()))


def scrape(url: str, timeout_s: float = _SCRAPE_TIMEOUT_S) -> MetricsView:
    """One scrape of ``url``; a failure is the view's ``error``, never an exception."""
    from prometheus_client.parser import text_string_to_metric_families

    view = MetricsView(url, time.monotonic())
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # http(s) only: checked
            body = resp.read(_MAX_METRICS_BYTES + 1)
        if len(body) > _MAX_METRICS_BYTES:
            raise ValueError(f"over {_MAX_METRICS_BYTES} bytes: not a Baton /metrics page")
        for family in text_string_to_metric_families(body.decode("utf-8", "replace")):
            for sample in family.samples:
                view.samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    # HTTPException: a server that does not speak HTTP (BadStatusLine, a line too long)
    except (OSError, ValueError, urllib.error.URLError, http.client.HTTPException) as exc:
        view.error = clean_field(f"{type(exc).__name__}: {exc}", 200)
    return view


def check_metrics_url(url: str) -> str:
    """``url`` when it is an http(s) URL (urllib would also open file:// and ftp://)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:  # "http://[::1": an unclosed IPv6 bracket
        hostname = None
    if hostname is None or parts.scheme not in ("http", "https"):
        raise ConfigError(
            f"--metrics: expected http://HOST:PORT/metrics (a worker's or sink's endpoint), "
            f"got {clean_field(url, 200)!r}"
        )
    return url


def quantile(buckets: list[tuple[str, float]], q: float) -> float | None:
    """The ``q`` quantile of a cumulative Prometheus histogram (linear within a bucket)."""
    bounds = sorted(
        (bound, count)
        for bound, count in ((_bound(le), count) for le, count in buckets)
        if bound is not None and math.isfinite(count)
    )
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    low_bound, low_count = 0.0, 0.0
    for bound, count in bounds:
        if count >= rank:
            if math.isinf(bound):
                return low_bound
            share = (rank - low_count) / (count - low_count) if count > low_count else 1.0
            return low_bound + (bound - low_bound) * share
        low_bound, low_count = bound, count
    return low_bound


def _bound(le: str) -> float | None:
    """A histogram bucket's upper bound; None for one that is not a number (a page that is
    not ours)."""
    try:
        bound = math.inf if le == "+Inf" else float(le)
    except ValueError:
        return None
    return None if math.isnan(bound) else bound
