"""What the audit sink needs before it reads: its topics, its consumer, its migrated audit."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from baton.schemas.errors import AuditUnavailable, BrokerUnavailable
from baton.schemas.settings import Settings
from baton.sinks.clickhouse import audit_errors, connect, parse_dsn
from baton.sinks.schema import migrate

__all__ = [
    "StoppedWaiting",
    "audit_consumer",
    "audit_consumer_config",
    "decisions_topic",
    "ensure_catalog_topics",
    "open_audit",
    "receive_bounds",
    "stops_topic",
]

log = logging.getLogger(__name__)


#: the sink's fetch.max.bytes (librdkafka's default, made explicit: the receive bound below
#: counts on it): a fetch answer holds record batches up to about this much, and a first batch
#: larger than it whole
FETCH_MAX_BYTES = 52_428_800
#: the largest record batch Tansu takes: it refuses a produce request past 256 MiB (measured,
#: 0.6.0: 268,435,000 B of value taken, 268,436,000 B refused "KafkaProtocol(Overflow)")
TANSU_LARGEST_BATCH = 256 * 1024 * 1024
#: receive.message.max.bytes by default (BATON_SINK_MAX_RECEIVE_BYTES): the largest batch Tansu
#: holds after a fetch's worth of others, so no batch on Tansu stalls a partition, while the
#: memory one answer takes stays bounded (librdkafka's buffer and Python's copy of a record:
#: ~2x the answer; session 17's 2 GiB let a writer of gov.decisions make the sink take ~4 GiB)
DEFAULT_MAX_RECEIVE_BYTES = TANSU_LARGEST_BATCH + FETCH_MAX_BYTES + 512
#: librdkafka's largest receive.message.max.bytes (a Kafka answer's size is an int32)
MAX_RECEIVE_BYTES = 2_147_483_647


class StoppedWaiting(Exception):
    """Told to stop (Ctrl-C, SIGTERM) while retrying an unreachable Kafka or ClickHouse:
    nothing was read, so the process ends as any asked to stop does (exit 0), saying so."""


def ensure_catalog_topics(settings: Settings, stop_event: threading.Event) -> None:
    """Create Baton's topics if missing, retrying while Kafka is unreachable (until stop).

    Subscribing to a missing topic is not harmless: Tansu (and Kafka with auto-creation on)
    creates it with the broker's default partition count, which then disagrees with the
    catalog and splits runs across partitions.
    """
    from baton.streams.kafka import admin_config
    from baton.streams.net import check_reachable
    from baton.streams.topics import ensure_topics

    attempt = 0
    while True:
        try:
            # a refused port is named as such at once ("H:P: connection refused"), not as
            # "timed out after N s" once the admin client's timeout is spent
            check_reachable(settings.bootstrap, settings.connect_timeout_s)
            ensure_topics(
                admin_config(settings.kafka_config()),
                _catalog(settings),
                timeout=settings.connect_timeout_s,
            )
            return
        except BrokerUnavailable as exc:
            wait = min(30.0, 1.0 * 2 ** min(attempt, 5))
            attempt += 1
            log.warning("%s; retrying in %.0f s", exc, wait)
            if stop_event.wait(wait):
                raise StoppedWaiting(f"stopped while Kafka was unreachable ({exc})") from None


def decisions_topic(settings: Settings) -> str:
    """The decisions topic name, with the configured prefix (from the topic catalog)."""
    return _catalog(settings).decisions


def stops_topic(settings: Settings) -> str:
    """The stops topic name, with the configured prefix (from the topic catalog)."""
    return _catalog(settings).stops


def _catalog(settings: Settings) -> Any:
    from baton.streams.topics import TopicCatalog

    return TopicCatalog.from_settings(settings)


def audit_consumer(
    kafka_config: dict[str, str],
    group_id: str,
    overrides: dict[str, Any] | None = None,
    max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
) -> Any:
    """The sink's confluent-kafka consumer: offsets stored and committed only by the sink."""
    from confluent_kafka import Consumer

    return Consumer(audit_consumer_config(kafka_config, group_id, overrides, max_receive_bytes))


def receive_bounds(max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES) -> dict[str, int]:
    """librdkafka's receive bound and the fetch size under it: a fetch answer past
    receive.message.max.bytes is never received (one record past librdkafka's 100 MB default
    on a topic had every fetch refused and the connection dropped, for every partition), so
    Baton's readers of its own topics (the sink, the alerter, `baton tail`) take answers up
    to ``max_receive_bytes``."""
    return {
        "receive.message.max.bytes": max_receive_bytes,
        # librdkafka refuses a fetch.max.bytes within 512 B of the receive bound
        "fetch.max.bytes": min(FETCH_MAX_BYTES, max_receive_bytes - 512),
    }


def audit_consumer_config(
    kafka_config: dict[str, str],
    group_id: str,
    overrides: dict[str, Any] | None = None,
    max_receive_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
) -> dict[str, Any]:
    """The configuration of ``audit_consumer``: no fetch answer past ``max_receive_bytes``."""
    from baton.streams.kafka import consumer_config

    conf = consumer_config(
        kafka_config,
        group_id,
        {
            "enable.auto.offset.store": False,
            # a backlog fills librdkafka's prefetch queue (64 MB, ~60,000 decisions) and
            # it then waited fetch.queue.backoff.ms (1 s) before fetching again: the sink
            # starved with a backlog in the broker (measured: consume() returned nothing
            # for 0.8 s at a time); check again soon instead
            "fetch.queue.backoff.ms": 20,
            # a fetch answer past receive.message.max.bytes is never received: one record of
            # 120 MB on gov.decisions (Tansu takes it) kept the sink from reading its partition
            # again with librdkafka's 100 MB default (measured: "Invalid response size",
            # reconnect, the same fetch); read, it is rejected as oversized
            # (rows.MAX_RECORD_BYTES). The bound is what no batch on Tansu exceeds, not 2 GiB:
            # the answer costs the sink ~2x its size in memory (DEFAULT_MAX_RECEIVE_BYTES)
            **receive_bounds(max_receive_bytes),
            "error_cb": lambda err: log.warning("audit sink: Kafka: %s", err),
            **(overrides or {}),
        },
    )
    # offsets are ours to commit, and only after the insert: never auto-commit
    conf["enable.auto.commit"] = False
    return conf


def open_audit(
    dsn: str,
    ttl_days: int,
    stop_event: threading.Event | None = None,
    backoff: Callable[[int], float] | None = None,
    *,
    ca_cert: str | Path | None = None,
    verify: bool = True,
    timeout_s: float | None = None,
) -> Client:
    """Connect to ``dsn`` and migrate, retrying while ClickHouse is unreachable (until stop)."""
    backoff = backoff or (lambda attempt: min(30.0, 0.5 * 2 ** min(attempt, 6)))
    label = parse_dsn(dsn).label
    attempt = 0
    while True:
        try:
            # the sink must own a chDB directory, never follow another process's endpoint
            client = connect(
                dsn,
                follow_endpoint=False,
                create=True,
                ca_cert=ca_cert,
                verify=verify,
                timeout_s=timeout_s,
            )
            with audit_errors(label, "migrating the audit schema"):
                migrate(client, ttl_days)
            return client
        except AuditUnavailable as exc:
            if stop_event is None or parse_dsn(dsn).kind == "chdb":
                raise
            wait = backoff(attempt)
            attempt += 1
            log.warning("audit sink: %s; retrying in %.1f s", exc, wait)
            if stop_event.wait(wait):
                raise StoppedWaiting(f"stopped while the audit was unreachable ({exc})") from None
