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
runs it refuses, and those it holds an older record of than their newest (``passed_over``: a
worker without the key decided them after one with it, a key rolled in one worker at a time,
h49c F1; or records forged). :func:`rebuild_refused` rebuilds those of them the audit holds
decisions of, as `baton up`'s restart does (``restore_rebuild``: replayed under their recorded
policies), and `baton runs rebuild` writes each to the run's changelog partition with the
workers' MAC; the workers take them when they start (each restores its partitions).

Fails closed (the checks are cli/runs_evidence.py's): nothing is written unless the operator
says every worker is stopped (``--workers-stopped``: a paused one shows nothing) and none seems
to run (``workers_running``: the group's members, or on Tansu, which lists none, a probe
answered or its offsets moving); a worker holding a run in memory would decide it past the
rebuilt state, and the next restore would not take its records after it. A run the restore does
not refuse is never written (the workers hold its state). A run of which the decisions topic
holds a decision the audit lacks (``decisions_on_topic``, ``missing_from_audit``: the records
with the workers' audit MAC; the sink behind, rows lost to a restored backup or a replica
behind) is not written: the rebuilt state would miss it. The sink group's committed offsets are
no such proof (anyone may commit them, past the end too: h49a H4, and the audit may have lost
rows the sink stored: H2). A run that does not replay exactly is left refused unless asked to
write it STOPPED. Nothing is said of a changelog partition that cannot be read to its end.

A rebuilt record's seq is past every record of the run written before it (``now``'s
milliseconds, or its last event's + 1 s if later, << 16, as a run begun then): a copy of one of
the workers' older records of the run, written again after it, is not taken.

A run the workers' sweep would have forgotten by now is written as the tombstone it forgot
(due: the sweep forgets it again once a worker restores it), which lifts the refusal.

Not guaranteed: the audit's decisions older than the decisions topic's retention are taken as
they are (rows deleted from a run's end before then go unseen: the chain names only a gap).
A run without a decision in the audit (a record forged for a run no worker decided, or one the
audit's TTL dropped) is not rebuilt: it stays refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from baton.processors.state import RunState
from baton.processors.state_gate import NotTaken, StateGate, refusal_of
from baton.schemas.errors import BrokerUnavailable, ConfigError
from baton.schemas.settings import Settings
from baton.streams.partitioner import partition_for
from baton.streams.topics import changelog_topic

if TYPE_CHECKING:
    from confluent_kafka import Consumer

__all__ = [
    "PAGE",
    "STALL_S",
    "Rebuild",
    "RefusedRuns",
    "ends_committed",
    "partitions_of",
    "read_refused",
    "rebuild_refused",
]

#: seconds a partition may go without a new record before its read is given up
STALL_S = 30.0
#: seconds the whole read may take (a CLI, not a rebalance callback: far more than a restore)
_MAX_S = 3600.0
#: runs a query of the audit names at most
PAGE = 1000


@dataclass
class RefusedRuns:
    """What a restore of the changelog ``topic`` makes of its runs."""

    topic: str
    partitions: int
    #: run id (the record's key, bytes) -> (partition, why)
    refused: dict[bytes, tuple[int, str]] = field(default_factory=dict)
    #: the runs (keys) the restore holds a state of
    held: set[bytes] = field(default_factory=set)
    #: of those, the runs with records after the one held that it did not take -> how many
    #: (a worker without the key decided the run after one with it: a rolling upgrade, h49c
    #: F1; or records forged or written again): the state held may be older than its decisions
    passed_over: dict[bytes, int] = field(default_factory=dict)
    #: records it did not take (the first five named)
    notes: NotTaken = field(default_factory=NotTaken)


def read_refused(settings: Settings, keys: list[bytes]) -> RefusedRuns:
    """The changelog of ``settings.app_id`` read as a worker's restore reads it, with the
    workers' seal ``keys``; BrokerUnavailable when a partition cannot be read to its end."""
    from confluent_kafka import Consumer

    from baton.cli.replay_kafka_read import topic_partitions
    from baton.processors.faust_restore import read_changelog
    from baton.processors.state_gate import REFUSED

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
        ends = ends_committed(consumer, topic, parts, settings)
    finally:
        consumer.close()
    gate = _Watching(StateGate(keys, topic, len(parts), settings.tombstone_retention_s))
    out = RefusedRuns(topic, len(parts))
    todo = {p: ends.get((topic, p), 0) for p in parts}
    latest, last = read_changelog(
        config,
        topic,
        todo,
        STALL_S,
        _MAX_S,
        gate,
        out.notes,  # type: ignore[arg-type]
    )
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
            if gate.passed_over.get(key):
                out.passed_over[key] = gate.passed_over[key]
    return out


class _Watching:
    """A state gate that also counts, per run, the records after the one it holds that it did
    not take (a taken record starts the count again)."""

    def __init__(self, gate: StateGate) -> None:
        self.gate = gate
        self.passed_over: dict[bytes, int] = {}

    def admit(
        self,
        key: object,
        partition: int,
        value: bytes | None,
        held: object,
        notes: NotTaken,
        at: str,
    ) -> object:
        taken = self.gate.admit(key, partition, value, held, notes, at)
        if type(key) is bytes:
            if taken is not held:
                self.passed_over.pop(key, None)
            elif value is not None and type(held) is bytes and held[:1] == b"{":
                self.passed_over[key] = self.passed_over.get(key, 0) + 1
        return taken


def ends_committed(
    consumer: Consumer, topic: str, partitions: Iterable[int], settings: Settings
) -> dict[tuple[str, int], int]:
    """The committed end of each of ``topic``'s ``partitions`` (its high watermark, as
    ``committed_ends`` corrects it); a transaction left open on a partition (which holds back
    every record after it: Tansu never aborts one) a BrokerUnavailable naming it, not a
    traceback (h49b F2)."""
    from confluent_kafka import TopicPartition

    from baton.streams.transactions import committed_ends

    high = {
        (topic, p): consumer.get_watermark_offsets(
            TopicPartition(topic, p), timeout=settings.connect_timeout_s, cached=False
        )[1]
        for p in partitions
    }
    try:
        return committed_ends(settings.kafka_config(), high, timeout_s=settings.connect_timeout_s)
    except TimeoutError as exc:
        raise BrokerUnavailable(f"cannot read to the end at {settings.bootstrap}: {exc}") from None


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
    #: the runs the workers' sweep would have forgotten: written as their due tombstones
    forgotten: set[str] = field(default_factory=set)


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
    todo = list(runs)
    for i in range(0, len(todo), PAGE):  # (one query a page: a flood of forged ids, h49b F3)
        scope = ReplayScope(run_ids=tuple(todo[i : i + PAGE]))
        for run in runs_of(read_runs_rows(client, scope)):  # type: ignore[arg-type]
            out.decisions[run[0].run_id] = len(run)
            recorded.append(run)
    for run_id in todo:
        if run_id not in out.decisions:
            out.decisions[run_id] = 0
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
    # (and past its last event's time by the workers' clock: this host's may be behind theirs)
    # a run the sweep would have forgotten: its tombstone, due (a record of the workers' lifts
    # the refusal, then their sweep forgets it; left out, the run id stayed refused for good)
    out.forgotten = {state.run_id for state in rebuilt.forgotten}
    rebuilt.states += rebuilt.forgotten
    for state in rebuilt.states:
        # (bounded: a day ahead at most; the sink refuses decisions dated further off)
        wall = now.timestamp()
        latest = min(max(wall, (state.last_event_at or 0.0) + 1.0), wall + 86_400.0)
        state.seq = max(state.seq, int(latest * 1000) << 16)
    out.states = rebuilt.states
    done = {state.run_id for state in out.states}
    for run_id, count in out.decisions.items():
        if count and run_id not in done:
            out.left[run_id] = (
                "its rows name no run an event can carry (forged): nothing to restore; it "
                "stays refused"
            )
    return out


def partitions_of(run_ids: Iterable[str], partitions: int) -> list[int]:
    """The changelog partitions of ``run_ids`` (the workers to restart hold them)."""
    return sorted({partition_for(run.encode(), partitions) for run in run_ids})
