"""Readiness probe: a run_finished for a probe run must come back as a decision end to end."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from baton.schemas.decision import Decision
from baton.schemas.decision_signing import DecisionKeys
from baton.schemas.errors import BrokerUnavailable
from baton.schemas.events import RunFinished
from baton.streams.partitioner import partition_for

__all__ = ["PROBE_TENANT", "wait_until_deciding"]

#: probe decisions land in the audit under this tenant so analysts can filter them out
PROBE_TENANT = "__baton__"


#: librdkafka lines go to Python logging (quiet unless -v), not raw to stderr
_KAFKA_LOG = logging.getLogger("baton.kafka")


def wait_until_deciding(
    kafka_conf: dict[str, str],
    requests_topic: str,
    decisions_topic: str,
    partitions: int,
    timeout_s: float = 60.0,
    keys: DecisionKeys | None = None,
) -> float:
    """Block until a worker answers a probe event; return the seconds it took. With ``keys``
    (the workers' public keys) only an answer they signed counts: a writer of the decisions
    topic answering the probe made `baton up` say ready with no worker deciding."""
    run_id = f"__probe_{uuid.uuid4().hex[:12]}"
    key = run_id.encode()
    partition = partition_for(key, partitions)
    consumer = Consumer(
        {
            **kafka_conf,
            "group.id": f"baton-probe-{run_id}",
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            "logger": _KAFKA_LOG,
        }
    )
    producer = Producer({**kafka_conf, "partitioner": "murmur2_random", "logger": _KAFKA_LOG})
    start = time.monotonic()
    try:
        try:
            _, high = consumer.get_watermark_offsets(
                TopicPartition(decisions_topic, partition), timeout=10
            )
        except KafkaException as exc:
            raise BrokerUnavailable(
                f"cannot reach Kafka at {kafka_conf.get('bootstrap.servers')} to probe "
                f"{decisions_topic}: {exc}"
            ) from None
        consumer.assign([TopicPartition(decisions_topic, partition, max(high, 0))])
        event = RunFinished(run_id=run_id, tenant=PROBE_TENANT, event_time=datetime.now(UTC))
        last_sent = 0.0
        while time.monotonic() - start < timeout_s:
            if time.monotonic() - last_sent > 5.0:
                # re-sent while no worker owns the partition yet; the engine dedups it
                producer.produce(requests_topic, event.to_json(), key)
                producer.flush(5)
                last_sent = time.monotonic()
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            if msg.key() != key or (keys and not keys.verifies(msg.value())):
                continue
            try:
                if Decision.from_json(msg.value()).run_id == run_id:
                    return time.monotonic() - start
            except ValueError:
                continue  # someone else's record on the topic: not ours to judge
        raise BrokerUnavailable(
            f"no Baton worker answered on {decisions_topic} within {timeout_s:g} s "
            f"(Kafka at {kafka_conf.get('bootstrap.servers')}); is a worker running?"
        )
    finally:
        consumer.close()
