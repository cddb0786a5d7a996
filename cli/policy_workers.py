"""The policy the workers recorded in force: the newest ``policy_in_force`` record on
gov.decisions (a worker publishes one, with the whole policy, at its start and at every
policy it applies; all under the key ``*``).

`baton policy publish` compared a new policy with the one *it* computed from a --policy file
and the control topic: addressed with --bootstrap alone (a Kafka cluster) that was the seed
policy, which lists no operators, so a file dropping every operator of the workers' --policy
file was published with exit 0; a --policy file edited after the workers loaded it did the
same (H1, session 34). The workers' own record says what they hold.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from baton.schemas.policy import Policy
from baton.schemas.settings import Settings

if TYPE_CHECKING:
    from baton.schemas.decision_signing import DecisionKeys

__all__ = ["RecordedPolicy", "workers_policy"]

#: records of the ``*`` partition read back from its end, at most
MAX_SCANNED = 200_000
_FIRST_WINDOW = 2_000


class RecordedPolicy:
    """A worker's record of the policy it decides under."""

    def __init__(self, policy: Policy, worker: str, at: datetime) -> None:
        self.policy, self.worker, self.at = policy, worker, at

    def describe(self) -> str:
        return f"recorded by worker {self.worker} at {self.at:%Y-%m-%d %H:%M:%S} UTC"


def workers_policy(settings: Settings, timeout: float) -> RecordedPolicy | None:
    """The newest ``policy_in_force`` record whose document hashes to its version, read back
    from the end of the ``*`` partition of gov.decisions in growing windows (at most
    :data:`MAX_SCANNED` records, ``timeout`` seconds); None when none is found. With
    ``decision_keys``: only records they verify, every window read, the newest by its signed
    time; without: the newest of the first window holding one."""
    from confluent_kafka import Consumer, TopicPartition

    from baton.schemas.decision_signing import decision_keys
    from baton.streams.kafka import consumer_config
    from baton.streams.partitioner import partition_for
    from baton.streams.topics import TopicCatalog

    keys = decision_keys(settings.decision_keys, unset="")
    topic = TopicCatalog(prefix=settings.topic_prefix).decisions
    extra = {"isolation.level": "read_committed", "enable.partition.eof": True}
    consumer = Consumer(consumer_config(settings.kafka_config(), "baton-policy-publish", extra))
    deadline = time.monotonic() + timeout
    try:
        meta = consumer.list_topics(topic, timeout=settings.connect_timeout_s)
        if topic not in meta.topics or not meta.topics[topic].partitions:
            return None
        p = partition_for(b"*", len(meta.topics[topic].partitions))
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        stop, window = None, _FIRST_WINDOW  # stop None: read to the partition's end
        start = high
        best: RecordedPolicy | None = None
        while time.monotonic() < deadline and high - start < MAX_SCANNED:
            begin = max(low, start - window)
            found = _newest_in(consumer, TopicPartition(topic, p, begin), stop, deadline, keys)
            if found is not None and (best is None or found.at > best.at):
                best = found
            # unsigned records: the newest in the topic (a forger sets any time); signed ones:
            # every window read, the newest by its signed time wins (a worker's old record
            # copied to the end, the real one 2,000 records back, was taken: h43b F2b)
            if (best is not None and not keys) or begin <= low:
                return best
            stop, start, window = begin, begin, window * 4
        return best
    finally:
        consumer.close()


def _newest_in(
    consumer: Any, tp: Any, stop: int | None, deadline: float, keys: DecisionKeys
) -> RecordedPolicy | None:
    """The newest valid record from ``tp``'s offset up to ``stop`` (None: the end), signed by
    one of ``keys`` when there are any (BATON_DECISION_KEYS, a stack's: one forged unsigned
    record hid every "security change" a publish names: session 43, F10)."""
    from confluent_kafka import KafkaError

    consumer.assign([tp])
    newest = None
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error() is not None:
            if msg.error().code() == KafkaError._PARTITION_EOF:
                break
            continue
        if stop is not None and msg.offset() >= stop:
            break
        value = msg.value() or b""
        if (
            msg.key() == b"*"
            and b'"policy_in_force"' in value
            and (not keys or keys.verifies(value))
        ):
            found = _recorded(value)
            # the newest by its (signed) time, not by where it sits: a worker's old record
            # copied to the end verifies too (session 43, h43b F2)
            if found is not None and (newest is None or found.at >= newest.at):
                newest = found
    return newest


def _recorded(value: bytes) -> RecordedPolicy | None:
    from pydantic import ValidationError

    from baton.schemas.decision import Decision, Reason
    from baton.sinks.replay_source import policies_of

    try:
        decision = Decision.from_json(value)
    except ValidationError:
        return None
    if decision.reason != Reason.POLICY_IN_FORCE or decision.decided_at is None:
        return None
    policies, _ = policies_of([(decision.policy_version, decision.input)])
    policy = policies.get(str(decision.policy_version))
    if policy is None:
        return None
    return RecordedPolicy(policy, decision.worker or "?", decision.decided_at)
