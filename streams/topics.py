"""The topic catalog (names, partition counts, configs) and its idempotent creation on a broker.

Partition counts cannot be fixed after the fact (Tansu does not support CreatePartitions, and on
Apache Kafka adding partitions moves keys), so ``ensure_topics`` refuses to run against topics
whose counts disagree with the catalog rather than letting a run's state split.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from baton.schemas.errors import BrokerUnavailable, TopicMismatch
from baton.schemas.settings import Settings

__all__ = ["TopicCatalog", "TopicSpec", "changelog_topic", "ensure_topics"]

_DAY_MS = 24 * 3600 * 1000

# Events and decisions are transport, not the record: the audit lives in ClickHouse. A week
# lets a stopped worker or sink catch up after a long outage, and lets `replay` re-read input.
_TRANSPORT = {"cleanup.policy": "delete", "retention.ms": str(7 * _DAY_MS)}

# Kill switches and policy updates are the control *state*: a worker that starts reads the
# whole topic to learn which runs/tenants are killed. Never delete them; the topic is tiny.
# (Not compacted: compaction needs a key on every record and Tansu does not compact anyway.)
_CONTROL = {"cleanup.policy": "delete", "retention.ms": "-1"}

# Dead letters wait for a human; keep them longer than the input they came from.
_DEADLETTER = {"cleanup.policy": "delete", "retention.ms": str(30 * _DAY_MS)}

_CO_PARTITIONED_REASON = (
    "requests, approvals, decisions and stops are co-partitioned: every event of a run is keyed "
    "by run_id and must land on the same partition number in each topic, so that one worker "
    "sees the whole run"
)
_CONTROL_REASON = (
    "the control topic has one partition so that kill switches, releases and policy updates "
    "keep one total order"
)


def changelog_topic(app_id: str) -> str:
    """The runs table's changelog: Faust names a table's ``<app id>-<table>-changelog``, the
    worker's table is "runs" (processors/app.py), and it carries no BATON_TOPIC_PREFIX."""
    return f"{app_id}-runs-changelog"


@dataclass(frozen=True)
class TopicSpec:
    """One topic as Baton wants it: ``partitions_reason`` is None when any count is fine."""

    name: str
    partitions: int
    replication: int
    config: Mapping[str, str] = field(default_factory=dict)
    partitions_reason: str | None = None

    def new_topic(self) -> NewTopic:
        return NewTopic(
            self.name,
            num_partitions=self.partitions,
            replication_factor=self.replication,
            config=dict(self.config),
        )


@dataclass(frozen=True)
class TopicCatalog:
    """Every topic of one Baton deployment; ``prefix`` separates deployments on one cluster."""

    prefix: str = ""
    partitions: int = 8
    replication: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> TopicCatalog:
        return cls(settings.topic_prefix, settings.partitions, settings.replication_factor)

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"partitions: must be >= 1, got {self.partitions}")
        if self.replication < 1:
            raise ValueError(f"replication: must be >= 1, got {self.replication}")

    @property
    def requests(self) -> str:
        return f"{self.prefix}gov.handoff.requests"

    @property
    def approvals(self) -> str:
        return f"{self.prefix}gov.approvals"

    @property
    def control(self) -> str:
        return f"{self.prefix}gov.control"

    @property
    def decisions(self) -> str:
        return f"{self.prefix}gov.decisions"

    @property
    def stops(self) -> str:
        return f"{self.prefix}gov.stops"

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}gov.deadletter"

    def specs(self) -> list[TopicSpec]:
        """All topics with their partition counts and configs, in creation order."""
        base = self._base_config()
        run_keyed = {**base, **_TRANSPORT}

        def spec(
            name: str, partitions: int, config: dict[str, str], reason: str | None
        ) -> TopicSpec:
            return TopicSpec(name, partitions, self.replication, config, reason)

        return [
            spec(self.requests, self.partitions, run_keyed, _CO_PARTITIONED_REASON),
            spec(self.approvals, self.partitions, run_keyed, _CO_PARTITIONED_REASON),
            spec(self.decisions, self.partitions, run_keyed, _CO_PARTITIONED_REASON),
            spec(self.stops, self.partitions, run_keyed, _CO_PARTITIONED_REASON),
            spec(self.control, 1, {**base, **_CONTROL}, _CONTROL_REASON),
            # keyed by run_id when one could be read, but nothing joins on it: any count works
            spec(self.deadletter, self.partitions, {**base, **_DEADLETTER}, None),
        ]

    def _base_config(self) -> dict[str, str]:
        # With replicas, acks=all must mean "on two brokers", not "on whichever is left".
        if self.replication >= 3:
            return {"min.insync.replicas": "2"}
        return {}


def ensure_topics(
    admin_conf: Mapping[str, Any], catalog: TopicCatalog, timeout: float = 10.0
) -> dict[str, int]:
    """Create the catalog's missing topics and verify partition counts; return name -> count.

    Idempotent and safe when several workers race to create the same topics.
    Raises ``BrokerUnavailable`` when Kafka cannot be reached within ``timeout`` seconds or
    refuses a creation, ``TopicMismatch`` when an existing topic has the wrong partition count.
    """
    bootstrap = str(admin_conf.get("bootstrap.servers", "?"))
    admin = AdminClient(dict(admin_conf))
    specs = catalog.specs()
    deadline = time.monotonic() + timeout

    # list_topics() without a topic name: on Tansu (and on Kafka with auto.create.topics.enable)
    # asking for one missing topic by name auto-creates it with the broker's default count.
    existing = _partition_counts(admin, bootstrap, timeout, deadline)
    missing = [spec for spec in specs if spec.name not in existing]
    if missing:
        _create(admin, bootstrap, missing, timeout, deadline)
        # a new topic can take a moment to appear in the metadata of every broker
        while True:
            existing = _partition_counts(admin, bootstrap, timeout, deadline)
            if all(spec.name in existing for spec in specs):
                break
            if time.monotonic() >= deadline:
                absent = ", ".join(s.name for s in specs if s.name not in existing)
                raise BrokerUnavailable(
                    f"Kafka at {bootstrap} did not show the created topics {absent} "
                    f"within {timeout:g} s"
                )
            time.sleep(0.1)

    _verify(specs, existing)
    return {spec.name: existing[spec.name] for spec in specs}


def _partition_counts(
    admin: AdminClient, bootstrap: str, timeout: float, deadline: float
) -> dict[str, int]:
    remaining = max(deadline - time.monotonic(), 0.1)
    try:
        metadata = admin.list_topics(timeout=remaining)
    except KafkaException as exc:
        raise BrokerUnavailable(
            f"cannot reach Kafka at {bootstrap} (timed out after {timeout:g} s); "
            "is the broker running?"
        ) from exc
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def _create(
    admin: AdminClient, bootstrap: str, specs: list[TopicSpec], timeout: float, deadline: float
) -> None:
    remaining = max(deadline - time.monotonic(), 0.1)
    futures = admin.create_topics(
        [spec.new_topic() for spec in specs],
        operation_timeout=remaining,
        request_timeout=remaining,
    )
    for spec in specs:
        try:
            futures[spec.name].result(timeout=max(deadline - time.monotonic(), 0.1))
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # another worker created it first: its count is verified below
            if error.code() in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT):
                raise BrokerUnavailable(
                    f"cannot reach Kafka at {bootstrap} (timed out after {timeout:g} s); "
                    "is the broker running?"
                ) from exc
            raise BrokerUnavailable(
                f"Kafka at {bootstrap} refused to create topic {spec.name!r} "
                f"({spec.partitions} partitions, replication {spec.replication}): {error.str()}"
            ) from exc
        except TimeoutError as exc:
            raise BrokerUnavailable(
                f"cannot reach Kafka at {bootstrap} (timed out after {timeout:g} s); "
                "is the broker running?"
            ) from exc


def _verify(specs: list[TopicSpec], existing: Mapping[str, int]) -> None:
    problems = [
        spec
        for spec in specs
        if spec.partitions_reason is not None and existing[spec.name] != spec.partitions
    ]
    if not problems:
        return
    lines = [
        f"topic {spec.name!r} has {existing[spec.name]} partitions, expected {spec.partitions} "
        f"({spec.partitions_reason})"
        for spec in problems
    ]
    co_partitioned = {
        existing[s.name] for s in specs if s.partitions_reason == _CO_PARTITIONED_REASON
    }
    if len(co_partitioned) == 1 and all(
        s.partitions_reason == _CO_PARTITIONED_REASON for s in problems
    ):
        (actual,) = co_partitioned
        lines.append(
            f"the existing topics agree on {actual} partitions: set BATON_PARTITIONS={actual} "
            "to use them"
        )
    else:
        lines.append("recreate the topics (or use another BATON_TOPIC_PREFIX)")
    raise TopicMismatch("; ".join(lines))
