"""confluent-kafka client configs (producer, consumer, admin) from ``Settings.kafka_config()``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = [
    "NOT_WRITTEN",
    "PARTITIONER",
    "admin_config",
    "consumer_config",
    "kafka_said",
    "output_isolation",
    "printable_config",
    "producer_config",
    "undelivered",
]

# Kafka's Java client, Faust/aiokafka and librdkafka's murmur2_random agree on where a key goes;
# confluent-kafka's default (consistent_random, CRC32) does not. Our producers must put a run's
# events on the partition Faust and other clients expect, or a run's requests and approvals
# split across partitions (and workers) and its state with them.
PARTITIONER = "murmur2_random"

# librdkafka writes its logs straight to stderr; route them to Python logging instead so a
# CLI user sees one readable error (BrokerUnavailable) rather than a wall of "Connection refused".
_LOGGER = logging.getLogger("baton.kafka")


def kafka_said(exc: BaseException) -> str:
    """librdkafka's words of ``exc``: its KafkaError's text (a ``KafkaException`` carries the
    error as its first argument), not the error's repr; anything else as ``str``."""
    error = exc.args[0] if exc.args else None
    words = getattr(error, "str", None)
    return str(words()) if callable(words) else str(exc)


#: a produce acknowledged without an offset: not written (``undelivered``)
NOT_WRITTEN = (
    "acknowledged without an offset (taken for a duplicate of a batch this producer never "
    "sent: another writer used its producer id)"
)


def undelivered(err: Any, msg: Any) -> str | None:
    """What went wrong with one delivery report, or None when its record is written.

    A report without an error but without an offset is not delivered: Tansu answers a batch
    it takes for a duplicate (another writer used this producer's id and next sequence on the
    partition) with offset -1, and librdkafka reports that as a success (session 14, F4)."""
    if err is not None:
        return f"{msg.topic()}[{msg.partition()}]: {err.str()}"
    if msg.offset() is None or msg.offset() < 0:
        return f"{msg.topic()}[{msg.partition()}]: {NOT_WRITTEN}"
    return None


_PRODUCER_DEFAULTS: dict[str, Any] = {
    "partitioner": PARTITIONER,
    # Idempotence = acks=all + sequence numbers: retries neither duplicate nor reorder records,
    # and the per-run order of events is what the governance rules depend on. Tansu supports it.
    # Cost: a new producer holds records ~0.55 s until its producer id is assigned (measured on
    # Tansu), so create producers once per process, never per request.
    "enable.idempotence": True,
    # Throughput: wait up to 5 ms to fill batches of up to 10k records / 1 MiB. At a few
    # hundred bytes per event this is what lets one producer keep up with tens of thousands of
    # events per second; the 5 ms are negligible next to a handoff's latency.
    "linger.ms": 5,
    "batch.num.messages": 10_000,
    "batch.size": 1_048_576,
    # JSON events compress ~4x; lz4 costs little CPU. Works on Tansu and Apache Kafka.
    "compression.type": "lz4",
}

_CONSUMER_DEFAULTS: dict[str, Any] = {
    # A new consumer group starts at the beginning: governance must never skip events.
    "auto.offset.reset": "earliest",
    # At-least-once: callers commit after their output is durable (sink: after the insert).
    "enable.auto.commit": False,
    # An idle partition answers a fetch after 100 ms instead of librdkafka's 500 ms: the client
    # SDK waits for its decision on such a fetch, so this bounds its added latency.
    "fetch.wait.max.ms": 100,
}


def producer_config(
    kafka_config: Mapping[str, str], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Config for a ``confluent_kafka.Producer``: murmur2 partitioner, idempotent, batched.

    ``overrides`` are librdkafka properties (``{"linger.ms": 0}``) and win over the defaults,
    except the partitioner: build a raw dict to simulate a foreign client on purpose.
    """
    conf = {**kafka_config, **_PRODUCER_DEFAULTS, "logger": _LOGGER, **(overrides or {})}
    if conf["partitioner"] != PARTITIONER:
        raise ValueError(
            f"partitioner: must be {PARTITIONER!r} for Baton producers, got {conf['partitioner']!r}"
        )
    return conf


def consumer_config(
    kafka_config: Mapping[str, str], group_id: str, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Config for a ``confluent_kafka.Consumer`` in ``group_id``: earliest, manual commits.

    On Tansu a group join takes session.timeout.ms / 2 (23 s with librdkafka's 45 s default)
    and a second member joins after about session.timeout.ms / 2 + heartbeat.interval.ms:
    tests pass ``{"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}``.
    Offsets from ``get_watermark_offsets(cached=False)`` (ListOffsets) are wrong on Tansu when
    the last record batch held several records; the high watermark of a fetch is right.
    """
    return {
        **kafka_config,
        **_CONSUMER_DEFAULTS,
        "group.id": group_id,
        "logger": _LOGGER,
        **(overrides or {}),
    }


def admin_config(
    kafka_config: Mapping[str, str], overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Config for a ``confluent_kafka.admin.AdminClient``."""
    return {**kafka_config, "logger": _LOGGER, **(overrides or {})}


def printable_config(conf: Mapping[str, Any]) -> dict[str, Any]:
    """``conf`` fit for a message or a log line: every secret property (``sasl.password``,
    ``ssl.key.password``, any ``*password*`` or ``*secret*``) shown as ``***``, callbacks and
    the logger left out."""
    return {
        key: "***" if "password" in key or "secret" in key else value
        for key, value in conf.items()
        if not callable(value) and not isinstance(value, logging.Logger)
    }


def output_isolation(processing_guarantee: str | None) -> str:
    """How Baton's readers of the workers' output (the audit sink on gov.decisions, the
    alerter on gov.stops) read it: ``read_uncommitted`` under ``at_least_once``, where no
    Baton writer uses transactions there, so only another writer's transaction is ever
    there, and one it left open held those readers back for good on Tansu (the audit missed
    every later decision, a kill among them, lost at a `baton up` restart: session 30 H1);
    ``read_committed`` under ``exactly_once`` (a worker's aborted batch must not count)."""
    return "read_uncommitted" if processing_guarantee == "at_least_once" else "read_committed"
