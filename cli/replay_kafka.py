"""`baton replay --from-kafka`: a time range of the request and approval topics, without an audit.

Reads ``gov.handoff.requests`` and ``gov.approvals`` from their start to their end when the
command started, and ``gov.control`` from its start (a kill switch or a policy update made
before the range is in force in it). Timestamps are the producer's (any int64), so a record
is not placed by its own stamp: each partition is taken in offset order, as a worker read
it, at its partition's *clock*, the running maximum of the stamps along the partition
(``processors.replay_read_order``); the partitions and topics are merged by clock. The range
(``since`` to ``until``) is the records whose clock is in it: one stretch of each partition,
so a record stamped early amid a partition (a writer of the topic, a host's clock behind)
neither begins its run before the range nor leaves a gap in a run's history, and the
records after the first one read past ``until`` are after the range.

With no recorded decisions to compare with, the events are first decided as a worker would
have decided them (:func:`decide_topics`): in that order, each at its clock, by the worker's
own batch step, under a *baseline* policy (the one the workers ran: ``--baseline``, else
BATON_POLICY or the seed policy), with the control records applied in the same order by the
control follower's own step (``control_apply``: kill switches, releases, policy updates,
signatures checked against the policy in force). That is what the new policy is compared
with: the same report as a replay of the audit, where a kill switch's stops are replayed as
recorded.

A control command applied holds from its clock or its signing time, whichever is later (a record
that applies nothing: from its clock), and goes first at an equal time (a kill applies; fail
closed); it is read late on that clock (``ControlRead``). A command read at or after ``until``
though stamped well before it is decided after the range's run events, read late. A worker applies
control records as its follower reads them, so a run event within ``max_staleness_s`` after a kill
may have been decided before it. Not guaranteed: the replay stops such an event as killed under both
policies, so a change the new policy makes to it is not seen (a handoff 1 s after a kill of its run:
exit 0). A run with a record read in a trimmed partition's window may have begun in what is gone and
is partial, as in the audit replay (replayed from its first request read it would be judged on a
history it lacks); only a record the worker decided as the run's event where it was read counts
(``decided_here``: a dead letter under its key tells nothing). Any other run begins at its first
such record, before ``since`` or in the range, whatever event it is (a grant or denial first:
below): the worker decided it from an empty state (a writer who predicts a run id seeds it with a
completion before its first request, or with any event before ``since``: the run was "begun before
the range", partial, its change hidden). A run the replay cannot decide for another reason is listed
as partial with why *and* broken (exit 7: a gate never passes by its absence): a record of it
stamped past the read's start (plus ``CONTROL_CLOCK_SKEW_S``) or before the epoch (when it was read
is unknown; such a stamp does not move its partition's clock), a grant or denial of it stamped
before the request it answers (two topics, merged by clock: in which order the worker read them is
unknown), or a record of it read far past its own stamp across a control command that decides it
otherwise (held from the skew before that stamp on), or decided from the skew before such a
command's own time to its read time (``processors.replay_read_late``), or read past ``until`` though
stamped well before it. ``--tenant`` scopes whole runs by their first event's tenant, as the worker
took it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import NamedTuple

from baton.cli.replay_kafka_control import ControlRead, commands_in_range
from baton.cli.replay_kafka_read import read_topics
from baton.cli.replay_kafka_scope import ANSWERS, decided_here, in_scope, run_of, run_tenants
from baton.processors.batch import DEFAULT_MAX_STATE_BYTES, BatchProcessor
from baton.processors.control_apply import (
    ControlInForce,
    apply_control_record,
    history_unlogged,
)
from baton.processors.engine import NO_KILLS
from baton.processors.engine_control import CONTROL_CLOCK_SKEW_S
from baton.processors.replay import Recorded, ReplayReport, replay_runs, runs_of
from baton.processors.replay_read_late import LATE_AFTER_S, ReadLate
from baton.processors.replay_read_order import Stamped, read_order
from baton.processors.replay_steps import RUN_RETENTION_S, TOMBSTONE_RETENTION_S
from baton.processors.replay_sweep import PartitionRuns, ReplaySweep
from baton.schemas.decision import Decision, Outcome, Reason
from baton.schemas.policy import Policy
from baton.schemas.settings import Settings

__all__ = [
    "DecidedTopics",
    "decide_topics",
    "decided_here",
    "in_scope",
    "replay_decided",
    "replay_from_kafka",
]

#: the latest record timestamp a record is read at (event_time's own bound; a producer sets
#: any int64, and past year 9999 no datetime holds it): a later stamp, or one before -1 (no
#: timestamp), does not move its partition's clock, and its run cannot be decided
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)
_LATEST_MS = int(_LATEST.timestamp() * 1000)


class DecidedTopics(NamedTuple):
    """What a worker under the baseline decided for the topics' records (:func:`decide_topics`)."""

    #: the audit rows, run by run (a run begun before the range: cut by it)
    rows: list[Recorded]
    #: every policy that was in force (version -> policy)
    policies: dict[str, Policy]
    #: run id -> why when or in which order the worker decided it is unknown (broken, exit 7)
    undecidable: dict[str, str]


#: why a run is undecidable (listed broken: a gate never passes by a run's absence)
_UNKNOWN_TIME = (
    "a record of it is stamped past {latest} or before the epoch: when it was read is unknown"
)
_ANSWERED_FIRST = (
    "a grant or denial of it is read before its first request (requests and approvals are two "
    "topics, merged by their partitions' stamps): in which order the worker read them is unknown"
)
_READ_LATE = (
    f"a record of it or a control command is read more than {LATE_AFTER_S:g} s after its own "
    "stamp (a stamp ahead amid its partition moved the clock) with the other between: in which "
    "order the worker read them is unknown"
)
_SWEPT_LATE = (
    f"a record of it is read more than {LATE_AFTER_S:g} s after its own stamp (a stamp ahead "
    "amid its partition moved the clock) with the workers' sweep expiring, evicting or "
    "forgetting the run between: on which side of it the worker decided the record is unknown"
)
_CUT_LATE = (
    f"a record of it stamped more than {LATE_AFTER_S:g} s before --to is read after it (a stamp "
    "ahead amid its partition moved the clock): its history in the range may lack it"
)
_ANSWERED_EARLY = (
    "a grant or denial of it is read before the request it answers (requests and approvals are "
    "two topics, merged by their partitions' stamps): in which order the worker read them is "
    "unknown"
)


def decide_topics(
    records: list[Stamped],
    baseline: Policy,
    partitions: int,
    approvals: str,
    control: str,
    started_before: Collection[str] = (),
    latest_ms: int = _LATEST_MS,
    answered_before: Collection[str] = (),
    read_late: Mapping[tuple[str, int, int], int] = MappingProxyType({}),
    retention: tuple[float, float] = (RUN_RETENTION_S, TOMBSTONE_RETENTION_S),
) -> DecidedTopics:
    """What a worker under ``baseline`` decided for ``records`` (run events and ``control``
    records, in the order the workers read them: see the module docstring), and every
    policy that was in force. ``started_before``: the runs that may have begun in what a
    trimmed partition lost (partial); ``latest_ms``: a stamp from then on (or before -1) is
    of an unknown time; ``answered_before``: the runs with a grant or denial read in a
    trimmed partition's window. A run not begun in a trimmed window
    whose first event is such an answer (in the range or before it) is undecidable if a
    request-topic record of it is in the range (the worker read the two topics as they
    came), else partial (its requests are gone: nothing of it to decide). ``read_late``:
    (topic, partition, offset) -> the own stamp of a record its partition's clock reads
    more than LATE_AFTER_S later: a run decided on a side of a control command the worker
    may not have decided it on is undecidable (``processors.replay_read_late``).
    ``retention``: the workers' run and tombstone retention (their sweep, run on the
    records' clock: ``processors.replay_sweep``)."""
    in_force = ControlInForce(NO_KILLS, baseline, None, "--baseline")
    runs = PartitionRuns(partitions)  # max_runs a partition's, max_state_bytes the topic's
    proc = BatchProcessor(
        baseline, partitions, runs, "replay", lambda: in_force.kills, approvals_topic=approvals,
        max_state_bytes=DEFAULT_MAX_STATE_BYTES * partitions,
    )  # fmt: skip
    sweep = ReplaySweep(proc, *retention)
    policies = {baseline.version: baseline}
    started: set[str] = set()
    partial: set[str] = set(started_before)
    undecidable: dict[str, str] = {}
    rows: list[tuple[str, int, Recorded]] = []
    early: set[tuple[str, str]] = set()  # (run, approval id) answered before it was asked
    asked = {rec.key for _, topic, rec in records if topic not in (approvals, control)}
    commands = ControlRead(in_force)
    ordered = read_order(records, latest_ms, control, commands)
    held_late = commands.late(records, control, latest_ms, read_late)
    late = ReadLate(bool(held_late))
    for n, (at, topic, rec, stamped) in enumerate(ordered):
        now = datetime.fromtimestamp(at / 1000, UTC)
        if topic == control:
            # applied at the clock its own stamp read (as ControlRead did: a command signed
            # ahead is held from its signing only once applied)
            read_at = datetime.fromtimestamp(commands.read[rec.partition, rec.offset] / 1000, UTC)
            applied = apply_control_record(in_force, rec, "replay", read_at).in_force
            held = held_late.get((rec.partition, rec.offset))
            for run_id in late.command(at, held, in_force, applied):
                undecidable.setdefault(run_id, _READ_LATE)
            in_force = applied
            proc.policy = policies.setdefault(in_force.policy.version, in_force.policy)
            continue
        swept, forgotten = sweep.until(at, in_force.kills)
        rows += [(d.run_id, n, Recorded.of(d)) for d in swept]
        started.difference_update(forgotten)  # its next event begins a new run
        own = read_late.get((topic, rec.partition, rec.offset)) if read_late else None
        # a run begins at the first record the worker decided as its event here: a dead
        # letter under its key, or its event on another run's partition (forwarded, decided
        # where its copy is read), begins nothing
        run = run_of(rec.key)  # (a run's event: its key; parsed twice only until it began)
        event = (
            decided_here(rec, partitions, approvals) if run not in started or not stamped else None
        )
        if event is not None and event.run_id not in started:
            started.add(event.run_id)
            if event.run_id in partial:
                pass  # begun before the range
            elif event.run_id.encode() in asked and (
                event.run_id in answered_before or type(event) in ANSWERS
            ):
                undecidable.setdefault(event.run_id, _ANSWERED_FIRST)
            elif type(event) in ANSWERS:
                partial.add(event.run_id)  # answers only: its requests are gone
            # any other first event is the run's beginning: no record of it is before what was
            # read (every partition is read from its start, before since too; a trimmed one's
            # window is in started_before), and the worker decided it from an empty state; a run
            # begun in what retention deleted and read after the window was idle that long
            # (evicted: its handoffs stopped under either policy), as for a request first read
            # there
        runs.at = rec.partition % partitions  # (a partition past the count: forwarded)
        out = proc.process([rec], now)
        sweep.changed(out.changed)
        rows += [(d.run_id, n, Recorded.of(d)) for _, d in out.decisions if not d.reemitted]
        if not stamped:  # when it was read is unknown (a dead letter's time decides nothing)
            named = {d.run_id for _, d in out.decisions}
            if event is not None:
                named.add(event.run_id)
            for run_id in named:
                undecidable.setdefault(run_id, _UNKNOWN_TIME.format(latest=_shown(latest_ms)))
        for run_id in _answered_early(out.decisions, early):
            undecidable.setdefault(run_id, _ANSWERED_EARLY)
        for run_id in late.event(at, own, out.decisions):
            undecidable.setdefault(run_id, _READ_LATE)
        if own is not None:  # read late across the sweep's change of its run
            named = {d.run_id for _, d in out.decisions} | ({event.run_id} if event else set())
            for run_id in sweep.acted_after(own, named):
                undecidable.setdefault(run_id, _SWEPT_LATE)
    rows.sort(key=lambda r: (r[0], r[1]))
    return DecidedTopics(_cut_at_the_range(rows, partial), policies, undecidable)


def _shown(ms: int) -> str:
    return f"{datetime.fromtimestamp(ms / 1000, UTC):%Y-%m-%d %H:%M:%S} UTC"


def replay_decided(decided: DecidedTopics, new_policy: Policy) -> ReplayReport:
    """The report of ``new_policy`` over ``decided``: its undecidable runs listed as partial
    with why and as broken (exit 7), never replayed."""
    rows = [row for row in decided.rows if row.run_id not in decided.undecidable]
    # decided with the workers' sweep (decide_topics: a stop run_expired or a new chain says
    # where); a run's start before the range is known: cut by the range, not judged
    report = replay_runs(
        runs_of(rows), new_policy, decided.policies, retention_s=math.inf, judge=False
    )
    for run_id, why in decided.undecidable.items():
        report.partial[run_id] = why
        report.broken.append(run_id)
    return report


def _answered_early(
    decisions: list[tuple[int, Decision]], early: set[tuple[str, str]]
) -> Iterator[str]:
    """Note the answers to approvals not asked yet (``early``), and yield the runs that
    ask one later: requests and approvals are two topics, merged by their partitions'
    clocks only, and a grant stamped before the request it answers (an approver's clock
    seconds behind) is read first, its approval left pending, the granted handoff never
    counted (a later handoff a stricter max_handoffs stops showed no change)."""
    for _, d in decisions:
        if not d.approval_id:
            continue
        if d.reason == Reason.UNKNOWN_APPROVAL:
            early.add((d.run_id, d.approval_id))
        elif d.outcome == Outcome.APPROVAL_REQUIRED and (d.run_id, d.approval_id) in early:
            yield d.run_id


def _cut_late_of(
    tenant: str,
    cut_late: set[str],
    records: list[Stamped],
    before: dict[str, str | None],
    partitions: int,
    approvals: str,
) -> set[str]:
    """The runs of ``cut_late`` in ``tenant``'s scope: those whose tenant (``run_tenants``,
    from ``records``, every run's read, and ``before``) is it, and those whose tenant is not
    known, no event of them read but past --to (fail closed: which tenant's is unknown). H3,
    session 19: a run kept only with a record in the range dropped one whose every record a
    stamp ahead pushed past --to, its change hidden, exit 0."""
    from baton.schemas.names import fold

    tenants = run_tenants(records, before, partitions, approvals)
    return {run for run in cut_late if tenants.get(run) in (None, fold(tenant))}


def _cut_at_the_range(rows: list[tuple[str, int, Recorded]], partial: set[str]) -> list[Recorded]:
    """``rows`` (run by run, in order) with the chain start of each ``partial`` run naming a
    link before the range (a run without a chain start: its first row): replay calls the run
    partial (cut by the range). Only its first start: every row of it naming that link was
    a fork, and the run "broken" as if rows of an audit had been inserted."""
    recorded = [row for _, _, row in rows]
    first: dict[str, int] = {}  # run -> where its chain starts (else its first row)
    for i, (run, _, row) in enumerate(rows):
        if run not in partial:
            continue
        if run not in first or (row.chain_prev == "" and recorded[first[run]].chain_prev != ""):
            first[run] = i
    for i in first.values():
        recorded[i] = recorded[i]._replace(chain_prev="before the range")
    return recorded


def replay_from_kafka(
    settings: Settings,
    new_policy: Policy,
    baseline: Policy,
    since: datetime | None,
    until: datetime | None,
    run_id: str | None = None,
    tenant: str | None = None,
) -> tuple[ReplayReport, dict[str, Policy]]:
    """The report of ``new_policy`` against ``baseline`` (and the policy updates on the
    control topic) over the topics' range; and the policies that were in force."""
    from baton.streams.topics import TopicCatalog

    catalog = TopicCatalog(prefix=settings.topic_prefix, partitions=settings.partitions)
    # a stamp past the read's start (and an operator's clock skew) moved its partition's
    # clock ahead for every record after it: a record stamped a year ahead amid a partition
    # put the rest of it past --to (never replayed) and after the control records read later
    latest = min(_LATEST_MS, int((time.time() + CONTROL_CLOCK_SKEW_S) * 1000))
    answered: set[str] = set()
    late: dict[tuple[str, int, int], int] = {}
    cut_late: set[str] = set()
    records, before = read_topics(
        settings,
        [catalog.requests, catalog.approvals],
        since,
        until,
        latest,
        tenants=tenant is not None,
        trimmed_s=settings.run_retention_s,
        forget_s=settings.run_retention_s + settings.tombstone_retention_s,
        partitions=settings.partitions,
        approvals=catalog.approvals,
        answered=answered,
        late=late,
        cut_late=cut_late,
    )
    if tenant is not None:
        cut_late = _cut_late_of(
            tenant, cut_late, records, before, settings.partitions, catalog.approvals
        )
    if run_id is not None:
        cut_late &= {run_id}
    records = in_scope(records, before, run_id, tenant, settings.partitions, catalog.approvals)
    commands = read_topics(
        settings, [catalog.control], None, None, latest, "read_uncommitted", late=late
    )[0]
    records += commands_in_range(commands, until, late)
    with history_unlogged():
        decided = decide_topics(
            records,
            baseline,
            settings.partitions,
            catalog.approvals,
            catalog.control,
            before,
            latest,
            answered,
            late,
            (settings.run_retention_s, settings.tombstone_retention_s),
        )
    for run in cut_late:
        decided.undecidable.setdefault(run, _CUT_LATE)
    return replay_decided(decided, new_policy), decided.policies
