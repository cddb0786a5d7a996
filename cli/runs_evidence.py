"""What a rebuild of refused runs must see before it writes: no worker running, and every
decision of the runs on the decisions topic in the audit (cli/runs_refused.py says why).

Why not less: a worker that holds a run in memory decides it past the rebuilt state (h49a,
h49b F1: a stalled or backlogged worker answered no probe); the sink group's committed offsets
are no proof of the audit (anyone may commit them, past the end too: h49a H4, and rows may be
lost after they were stored: H2).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable

from baton.cli.runs_refused import PAGE, STALL_S, ends_committed
from baton.cli.wording import counted
from baton.schemas.errors import BrokerUnavailable, ConfigError
from baton.schemas.settings import Settings
from baton.streams.partitioner import partition_for
from baton.streams.topics import TopicCatalog

__all__ = ["decisions_on_topic", "missing_from_audit", "workers_running"]

#: seconds between two progress lines of a long read
_PROGRESS_S = 5.0


def workers_running(settings: Settings, probe_s: float = 10.0) -> str | None:
    """Why a worker of ``settings.app_id`` seems to run (None: nothing says one does): its
    group's members as Kafka lists them; else (Tansu lists none, and calls a group stable long
    after its last worker left) a probe answered within ``probe_s``, or the group's committed
    offsets moving meanwhile (a worker busy with a backlog answers no probe in time: h49b F1).
    A worker paused (SIGSTOP, a paused container) shows none of these: the caller's
    ``--workers-stopped`` is the operator's word for it."""
    from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    from baton.processors.probe import wait_until_deciding
    from baton.schemas.errors import BatonError

    group = settings.app_id
    admin = AdminClient(settings.kafka_config())
    timeout = settings.connect_timeout_s
    catalog = TopicCatalog.from_settings(settings)
    parts = [TopicPartition(catalog.requests, p) for p in range(settings.partitions)]

    def committed() -> list[tuple[int, int]]:
        request = [ConsumerGroupTopicPartitions(group, parts)]
        answer = admin.list_consumer_group_offsets(request, request_timeout=timeout)[group]
        return sorted((tp.partition, tp.offset) for tp in answer.result(timeout).topic_partitions)

    try:
        found = admin.describe_consumer_groups([group], request_timeout=timeout)[group]
        description = found.result(timeout=timeout)
        if description.members:
            hosts = sorted({f"{m.client_id}@{m.host}" for m in description.members})
            return f"the workers' group {group} has {counted(len(hosts), 'member')}: " + ", ".join(
                hosts
            )
        if description.state in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD):
            return None
        before = committed()
    except Exception as exc:
        raise BrokerUnavailable(
            f"cannot describe the workers' group {group} at {settings.bootstrap}: {exc}"
        ) from None
    try:
        wait_until_deciding(
            settings.kafka_config(),
            catalog.requests,
            catalog.decisions,
            settings.partitions,
            timeout_s=probe_s,
        )
    except BatonError:
        pass  # (no answer)
    else:
        return f"a worker of group {group} answered a probe"
    try:
        moved = committed() != before
    except Exception as exc:
        raise BrokerUnavailable(
            f"cannot read the offsets of group {group} at {settings.bootstrap}: {exc}"
        ) from None
    return (
        f"the workers' group {group} committed offsets in the last {probe_s:g} s" if moved else None
    )


def decisions_on_topic(
    settings: Settings,
    runs: Iterable[str],
    taken: Callable[[bytes], bool],
    say: Callable[[str], None] = print,
) -> dict[str, set[str]]:
    """The ids of the decisions of ``runs`` on the decisions topic (each run's partition, from
    its start to its committed end), of the records ``taken`` (a workers' audit MAC holds);
    BrokerUnavailable when a partition cannot be read to its end."""
    import orjson
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    from baton.cli.replay_kafka_read import topic_partitions

    topic = TopicCatalog.from_settings(settings).decisions
    config = settings.kafka_config()
    keys = {run.encode(): run for run in runs}
    found: dict[str, set[str]] = {run: set() for run in keys.values()}
    consumer = Consumer(
        {
            **config,
            "group.id": f"baton-runs-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    try:
        count = len(topic_partitions(consumer, topic, settings))
        if count != settings.partitions:  # (a run's decisions are on its murmur2 partition)
            raise ConfigError(
                f"{topic} has {count} partitions, the count given (--partitions, "
                f"BATON_PARTITIONS) is {settings.partitions}: give the workers'"
            )
        wanted = sorted({partition_for(key, count) for key in keys})
        ends = ends_committed(consumer, topic, wanted, settings)
        todo = {p: ends.get((topic, p), 0) for p in wanted if ends.get((topic, p), 0) > 0}
        total, read, said = sum(todo.values()), 0, time.monotonic()
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
        progress = time.monotonic()
        while todo:
            if time.monotonic() - progress > STALL_S:
                raise BrokerUnavailable(
                    f"reading {topic} partition(s) {', '.join(map(str, todo))} at "
                    f"{settings.bootstrap} made no progress for {STALL_S:.0f} s"
                )
            for msg in consumer.consume(10_000, 0.5):
                p, error = msg.partition(), msg.error()
                if p not in todo:
                    continue
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise BrokerUnavailable(f"reading {topic}[{p}]: {error.str()}")
                    if msg.offset() >= todo[p]:
                        del todo[p]
                    continue
                progress = time.monotonic()
                read += 1
                if progress - said > _PROGRESS_S:
                    say(f"runs rebuild: reading {topic}: {read:,} of ~{total:,} records")
                    said = progress
                if msg.offset() >= todo[p] - 1:
                    del todo[p]
                run = keys.get(msg.key())
                value = msg.value()
                if run is None or value is None or not taken(value):
                    continue
                try:
                    doc = orjson.loads(
                        value
                    )  # (a signature is a member: base64, checked by the MAC's reader)
                except orjson.JSONDecodeError:
                    continue
                if _decision_of(doc, run):  # (a record that is no decision: the sink's
                    found[run].add(doc["decision_id"])  # governance.rejected, h49b F4)
    finally:
        consumer.close()
    return found


def _decision_of(doc: object, run: str) -> bool:
    """Whether ``doc`` reads as a decision of ``run`` (the fields the sink stores it by)."""
    from baton.schemas.decision import Outcome, Reason

    return (
        type(doc) is dict
        and doc.get("run_id") == run
        and type(doc.get("decision_id")) is str
        and doc.get("outcome") in Outcome.__members__.values()
        and doc.get("reason") in Reason.__members__.values()
        and type(doc.get("decided_at")) is str
    )


def missing_from_audit(client: object, wanted: dict[str, set[str]]) -> dict[str, int]:
    """Of each run's decision ids in ``wanted``, how many the audit ``client`` reads holds no
    row of (runs missing none left out)."""
    from baton.sinks.schema import DATABASE

    runs = [run for run, ids in wanted.items() if ids]
    stored: dict[str, set[str]] = {run: set() for run in runs}
    for i in range(0, len(runs), PAGE):
        rows = client.query(  # type: ignore[attr-defined]
            f"SELECT DISTINCT run_id, decision_id FROM {DATABASE}.decisions "
            "WHERE run_id IN {runs:Array(String)}",
            parameters={"runs": runs[i : i + PAGE]},
        ).result_rows
        for run, decision_id in rows:
            stored[str(run)].add(str(decision_id))
    lacking = {run: len(wanted[run] - stored[run]) for run in runs}
    return {run: n for run, n in lacking.items() if n}
