"""A restore written to the fresh broker: run states to the changelog, commands to gov.control."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from baton.cli.restore_kills import reissued_commands
from baton.processors.state import RunState
from baton.processors.state_gate import StateMac
from baton.schemas.settings import Settings
from baton.streams.kafka import undelivered
from baton.streams.partitioner import partition_for
from baton.streams.topics import changelog_topic

__all__ = ["reissue", "write_changelog"]


def write_changelog(settings: Settings, states: list[RunState], mac_key: bytes = b"") -> None:
    """Write ``states`` to the runs table's changelog, each partition's last record alone
    (Tansu answers ListOffsets with the start of the last batch + 1, and Faust's recovery
    reads only up to it: see docs/architecture.md), each marked with the workers' state MAC
    under ``mac_key`` (their seal key: processors/state_gate.py; b"": unmarked)."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    from baton.schemas.errors import BrokerUnavailable

    if not states:
        return
    topic = changelog_topic(settings.app_id)
    config = settings.kafka_config()
    admin = AdminClient(config)
    futures = admin.create_topics(
        [
            NewTopic(
                topic,
                settings.partitions,
                settings.replication_factor,
                config={"cleanup.policy": "compact"},
            )
        ]
    )
    for future in futures.values():
        try:
            future.result(settings.connect_timeout_s)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerUnavailable(f"cannot create {topic}: {exc}") from None
    producer = Producer({**config, "linger.ms": 5})
    errors: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if (failed := undelivered(err, msg)) is not None:  # offset -1: not written (F4)
            errors.append(failed)

    mac = StateMac.of(mac_key)
    last: dict[int, tuple[bytes, bytes]] = {}
    for state in states:
        key = state.run_id.encode()
        partition = partition_for(key, settings.partitions)
        if partition in last:
            _produce(producer, topic, partition, *last[partition], delivered)
        record = state.to_bytes()
        last[partition] = (key, record if mac is None else mac.marked(topic, key, record))
    _flush(producer, errors, topic)
    for partition, (key, value) in last.items():
        _produce(producer, topic, partition, key, value, delivered)
        _flush(producer, errors, topic)


def reissue(settings: Settings, commands: list[str], say: Callable[[str], None]) -> int:
    """The applied control commands again on the fresh control topic, in their order: the
    workers apply them (and verify their signatures) before deciding, as after any start."""
    from confluent_kafka import Producer

    from baton.streams.topics import TopicCatalog

    topic = TopicCatalog(prefix=settings.topic_prefix, partitions=settings.partitions).control
    producer = Producer(settings.kafka_config())
    errors: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if (failed := undelivered(err, msg)) is not None:  # offset -1: not written (F4)
            errors.append(failed)

    def refused(line: str) -> None:
        say(f"restore: WARNING: a recorded command is not a control event, not re-issued: {line}")

    sent = 0
    for _scope, target, text in reissued_commands(commands, refused):
        _produce(producer, topic, 0, target.encode(), text.encode(), delivered)
        sent += 1
    _flush(producer, errors, topic)
    return sent


def _produce(
    producer: Any, topic: str, partition: int, key: bytes, value: bytes, delivered: Any
) -> None:
    while True:
        try:
            producer.produce(topic, value, key, partition=partition, on_delivery=delivered)
            break
        except BufferError:
            producer.poll(0.1)
    producer.poll(0)


def _flush(producer: Any, errors: list[str], topic: str) -> None:
    from baton.schemas.errors import BrokerUnavailable

    if producer.flush(30) or errors:
        raise BrokerUnavailable(
            f"could not write the restored run states to {topic}: "
            + ("; ".join(errors[:3]) or "not acknowledged within 30 s")
        )
