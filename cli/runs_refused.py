"""The runs a restore of the workers' changelog refuses, and their states rebuilt from the audit.

Why: a worker with a seal key restores a run only from a changelog record carrying the
workers' state MAC (processors/state_gate.py). A run whose records are all without it (a
compacted changelog whose newest record for the run is a forged one, every record written by
a worker without the key before it was set, or under another key) is **refused**: its events
are ``state_unreadable`` dead letters, fail closed, until a record of the workers' follows.
No worker writes one (it decides nothing of the run), so on Kafka the run stayed refused for
good; `baton up` rebuilds every run from the audit at its start, a Kafka deployment had no way.

What it does: :func:`read_refused` reads the changelog as a restore does (every partition from
its start to its committed end, through the state gate, with the workers' key) and names the
runs it refuses. :func:`rebuild_refused` rebuilds those of them the audit holds decisions of,
as `baton up`'s restart does (``restore_rebuild``: replayed under their recorded policies, a run
that does not replay exactly restored STOPPED, never reopened), and writes each to the run's
changelog partition with the workers' MAC. A worker takes it at its next restore of that
partition: restart the workers (one at a time) after it.

Fails closed: a run the restore does not refuse is never written (the workers hold its state,
and a rebuilt one could be older); nothing is written while the audit sink's group has not
stored every decision on the decisions topic (a rebuilt state would miss them), nor when a
changelog partition cannot be read to its end.

A rebuilt record's seq is past every record of the run written before it (``now``'s
milliseconds << 16, as a run begun now): a copy of one of the workers' older records of the
run, written again after it, is not taken.

Not guaranteed: a worker that still decides the run after the rebuild from a state it holds in
memory (one without the key, a roll not finished; or one that has not restored the run's
partition since its only records were replaced) writes states the next restore does not take
(older seqs: counted, `BatonForgedRunState`), and the decisions it made after the rebuild are
not in the state restored: rebuild a run once the workers' restore refuses it (restart the
workers first when in doubt). A run past the workers' retention, or without a decision in the
audit (a record forged for a run no worker decided, or one the audit's TTL dropped), is not
rebuilt: it stays refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from baton.processors.state import RunState
from baton.processors.state_gate import NotTaken, StateGate, refusal_of
from baton.schemas.errors import BrokerUnavailable, ConfigError
from baton.schemas.settings import Settings
from baton.streams.partitioner import partition_for
from baton.streams.topics import TopicCatalog, changelog_topic

__all__ = ["Rebuild", "Refused", "audit_behind", "read_refused", "rebuild_refused"]

#: seconds a changelog partition may go without a new record before its read is given up
_STALL_S = 30.0
#: seconds the whole read may take (a CLI, not a rebalance callback: far more than a restore)
_MAX_S = 3600.0


@dataclass
class Refused:
    """What a restore of the changelog ``topic`` makes of its runs."""

    topic: str
    partitions: int
    #: run id (the record's key, bytes) -> (partition, why)
    refused: dict[bytes, tuple[int, str]] = field(default_factory=dict)
    #: the runs (keys) the restore holds a state of
    held: set[bytes] = field(default_factory=set)
    #: records it did not take (the first five named)
    notes: NotTaken = field(default_factory=NotTaken)


def read_refused(settings: Settings, keys: list[bytes]) -> Refused:
    """The changelog of ``settings.app_id`` read as a worker's restore reads it, with the
    workers' seal ``keys``; BrokerUnavailable when a partition cannot be read to its end."""
    from confluent_kafka import Consumer, TopicPartition

    from baton.cli.replay_kafka_read import topic_partitions
    from baton.processors.faust_restore import read_changelog
    from baton.processors.state_gate import REFUSED
    from baton.streams.transactions import committed_ends

    topic = changelog_topic(settings.app_id)
    config = settings.kafka_config()
    consumer = Consumer({**config, "group.id": f"baton-runs-{uuid.uuid4().hex}"})
    try:
        try:
            parts = topic_partitions(consumer, topic, settings)
        except BrokerUnavailable as exc:
            if not str(exc).startswith("no topic "):
                raise
            raise BrokerUnavailable(
                f"no topic {topic} at {settings.bootstrap}: is BATON_APP_ID (--app-id) the "
                "workers' app id (their changelog is <app id>-runs-changelog), and has a worker "
                "run there?"
            ) from None
        if len(parts) != settings.partitions:
            raise ConfigError(
                f"{topic} has {len(parts)} partitions, the count given (--partitions, "
                f"BATON_PARTITIONS) is {settings.partitions}: give the workers' (a run's record "
                "is on its key's murmur2 partition of that many)"
            )
        high = {
            (topic, p): consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=settings.connect_timeout_s, cached=False
            )[1]
            for p in parts
        }
    finally:
        consumer.close()
    ends = committed_ends(config, high, timeout_s=settings.connect_timeout_s)
    gate = StateGate(keys, topic, len(parts), settings.tombstone_retention_s)
    out = Refused(topic, len(parts))
    todo = {p: ends.get((topic, p), 0) for p in parts}
    latest, last = read_changelog(config, topic, todo, _STALL_S, _MAX_S, gate, out.notes)
    short = [p for p, end in todo.items() if end > 0 and last.get(p, -1) < end - 1]
    if short:
        raise BrokerUnavailable(
            f"could not read {topic} partition(s) {', '.join(map(str, short))} to their end at "
            f"{settings.bootstrap} (a read that stalled, failed or went back; `baton -v` says "
            "which): nothing is said of their runs"
        )
    for key, (partition, value) in latest.items():
        if value is None:
            continue
        if value[:1] == bytes((REFUSED,)) and (why := refusal_of(value)) is not None:
            out.refused[key] = (partition, why)
        elif value[:1] == b"{":
            out.held.add(key)
    return out


def audit_behind(settings: Settings) -> tuple[int, str]:
    """How many decisions on the decisions topic the audit sink's group (``<app id>-audit``)
    has not committed past, and where most are; BrokerUnavailable when it cannot be read."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import AdminClient

    from baton.cli.doctor_lag import group_behind
    from baton.cli.replay_kafka_read import topic_partitions
    from baton.streams.kafka import kafka_said

    topic = TopicCatalog.from_settings(settings).decisions
    group = f"{settings.app_id}-audit"
    config = settings.kafka_config()
    consumer = Consumer({**config, "group.id": f"baton-runs-{uuid.uuid4().hex}"})
    try:
        parts = [TopicPartition(topic, p) for p in topic_partitions(consumer, topic, settings)]
        try:
            behind = group_behind(
                AdminClient(config),
                consumer,
                group,
                parts,
                settings.connect_timeout_s,
                config,
                hold_s=min(3.0, settings.connect_timeout_s / 2),
                exact=True,
            )
        except Exception as exc:
            raise BrokerUnavailable(
                f"cannot read how far the audit sink (group {group}) is on {topic} at "
                f"{settings.bootstrap}: {kafka_said(exc)}"
            ) from None
    finally:
        consumer.close()
    total = sum(n for _, n in behind.values())
    if not total:
        return 0, ""
    (_, partition), (committed, worst) = max(behind.items(), key=lambda item: item[1][1])
    never = " (the group never committed there: is `baton sink` running?)" if committed < 0 else ""
    return total, f"{topic}[{partition}]: {worst}{never}"


@dataclass
class Rebuild:
    """What :func:`rebuild_refused` did: the states written, and each run it left, with why."""

    states: list[RunState] = field(default_factory=list)
    #: run id -> its decisions read from the audit
    decisions: dict[str, int] = field(default_factory=dict)
    #: run id -> why it was not rebuilt
    left: dict[str, str] = field(default_factory=dict)
    #: the runs rebuilt STOPPED because the audit could not vouch for their history
    unverified: list[str] = field(default_factory=list)


def rebuild_refused(
    settings: Settings,
    client: object,
    runs: Iterable[str],
    chain_key: bytes,
    say: Callable[[str], None],
    now: datetime | None = None,
) -> Rebuild:
    """The states of ``runs`` (refused runs' ids) rebuilt from the audit ``client`` reads,
    as `baton up`'s restart rebuilds them (``chain_key``: the one the workers link with)."""
    from baton.cli.restore_rebuild import rebuild_from_audit
    from baton.processors.replay import runs_of
    from baton.sinks.render import shown_refusals
    from baton.sinks.replay_source import ReplayScope, read_policies, read_runs_rows

    now = now or datetime.now(UTC)
    out = Rebuild()
    policies, refused = read_policies(client)  # type: ignore[arg-type]
    for line in shown_refusals(refused):
        say(f"rebuild: {line}; not used")
    recorded = []
    for run_id in runs:
        rows = list(read_runs_rows(client, ReplayScope(run_id=run_id)))  # type: ignore[arg-type]
        out.decisions[run_id] = len(rows)
        if rows:
            recorded += runs_of(rows)
        else:
            out.left[run_id] = (
                "no decision of it in the audit: nothing to rebuild from (a record forged for a "
                "run no worker decided, or one past the audit's TTL); it stays refused"
            )
    rebuilt = rebuild_from_audit(client, recorded, policies, settings, chain_key, now)
    if not chain_key and recorded:
        say(
            "rebuild: WARNING: the decisions are checked without a chain key: a row forged "
            "into the audit with a correctly computed chain cannot be told from a worker's"
        )
    out.unverified = sorted({*rebuilt.unfaithful, *rebuilt.unverified_counters})
    # past every record of the run's life written so far (its seq: the start's ms << 16, one
    # more a write): a copy of an older record of the workers' written again after this one
    # is not taken (it would give the spend since back)
    floor = int(now.timestamp() * 1000) << 16
    for state in rebuilt.states:
        state.seq = max(state.seq, floor)
    out.states = rebuilt.states
    done = {state.run_id for state in out.states}
    for run_id, count in out.decisions.items():
        if count and run_id not in done:
            out.left[run_id] = (
                "past the workers' retention (BATON_RUN_RETENTION_S + "
                "BATON_TOMBSTONE_RETENTION_S after its last decision), or its rows name no "
                "run an event can carry: nothing to restore; it stays refused"
            )
    return out


def partitions_of(run_ids: Iterable[str], partitions: int) -> list[int]:
    """The changelog partitions of ``run_ids`` (the workers to restart hold them)."""
    return sorted({partition_for(run.encode(), partitions) for run in run_ids})
