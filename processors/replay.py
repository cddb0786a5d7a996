"""Recorded history decided again with the pure engine, under a new policy and the recorded one.

Input: each run's recorded decisions (:class:`Recorded`, one per audit row: the event the
engine read is in ``input``, see ``processors.recorded``), put in the order they were made by
their hash chain where the read order (the worker's clock) disagrees with it
(``processors.replay_order``). They are
cut into *steps* (one engine call each) and each step is decided twice from the run's start
by ``processors.replay_steps`` (the engine call the worker made, at the recorded time):

* under the **recorded policy** (the one its ``policy_version`` names): the *proof* that
  replay is exact. Decisions are linked into the run's hash chain like the worker links them,
  so a chained decision matches when its ``chain_hash`` does, which covers every field
  (needs the worker's ``BATON_AUDIT_CHAIN_KEY``); others match on id, outcome and reason.
* under the **new policy**: what would change, pairing the step's decisions in order.

Kill switches are operator actions, not policy: a step recorded as ``killed`` is decided with
its run killed under both policies (they are replayed as recorded). Inputs are replayed as
recorded: after a run's first difference its later steps say what the new policy would have
answered to the same requests (an orchestrator told ``stop`` may have sent others).

Not replayed: runs whose chain is broken (a gap, a fork: a row deleted, inserted or
altered; also listed in ``ReplayReport.broken``: the report cannot be trusted), runs whose
history does not start in what was read (trimmed by retention, or started before
``--since``: their first chained decision names a predecessor) and runs with a decision that
records no input (written before inputs were recorded): reported as partial, never decided
from the middle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Final

from baton.processors.recorded import REPLAY_COLUMNS, Recorded
from baton.processors.replay_order import in_chain_order
from baton.processors.replay_report import (
    Change,
    ReplayReport,
    RunOutcome,
    label,
    new_change,
    new_run,
    usd,
)
from baton.processors.replay_share import Watch, watched_policy
from baton.processors.replay_steps import (
    RUN_RETENTION_S,
    TOMBSTONE_RETENTION_S,
    TRIMMED,
    Replayer,
    faithful,
    is_partial,
    new_chain,
    step_context,
    steps,
)
from baton.processors.replay_trimmed import judge_trimmed
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Outcome
from baton.schemas.event_fast import fast_parse_text
from baton.schemas.events import (
    FAST_KINDS,
    MAX_EVENT_BYTES,
    EventError,
    HandoffCompleted,
    HandoffRequested,
    RunEvent,
    parse_event,
)
from baton.schemas.policy import Policy

__all__ = [
    "REPLAY_COLUMNS",
    "Change",
    "Recorded",
    "ReplayReport",
    "RunOutcome",
    "in_chain_order",
    "is_partial",
    "label",
    "rebuild_run",
    "replay_run",
    "replay_runs",
    "runs_of",
    "usd",
]

_new_row: Final = tuple.__new__
_Recorded: Final = Recorded
# plain strings: an enum member's lookup costs ten times a global's (_compare, per change)
# (Final: a compiled module reads them from C statics, not through the module's dict)
_STOP: Final = Outcome.STOP.value
_ALLOW: Final = Outcome.ALLOW.value
_parse_event: Final = parse_event
_FAST_KINDS: Final = FAST_KINDS
_MOST: Final = MAX_EVENT_BYTES
_HandoffRequested: Final = HandoffRequested
_HandoffCompleted: Final = HandoffCompleted


def _input_event(text: str | None, run_key: bytes) -> RunEvent | None:
    """A step's recorded input as parse_event reads it (None: a timer step, no input): the
    compiled fast path in one call where it surely applies (the event of ``run_key``'s run),
    read from the text itself, else parse_event of its bytes, errors and all."""
    if text is None:
        return None
    if _FAST_KINDS:
        event = fast_parse_text(text, _FAST_KINDS, _MOST)
        if event is not None and event.run_id.encode() == run_key:
            return event  # type: ignore[no-any-return]
    return _parse_event(text.encode(), run_key)


def runs_of(rows: Iterable[Sequence[object]]) -> Iterator[list[Recorded]]:
    """Rows in REPLAY_COLUMNS order (or Recorded), sorted by run then time, one list per run."""
    run: list[Recorded] = []
    run_id = None
    for row in rows:
        rec = row if type(row) is _Recorded else _new_row(_Recorded, row)
        if rec[0] != run_id:
            if run:
                yield run
            run, run_id = [], rec[0]
        run.append(rec)  # type: ignore[arg-type]
    if run:
        yield run


#: (recorded version, new version) -> watched_policy: watching costs more than deciding a
#: run's events; versions hash the whole documents, so they key the answer
_WATCHED: Final[dict[tuple[str, str], tuple[Policy, Watch] | None]] = {}


def _watched(recorded: Policy, new: Policy) -> tuple[Policy, Watch] | None:
    """``replay_share.watched_policy(recorded, new)``, made once per pair of versions."""
    key = (recorded.version, new.version)
    if key not in _WATCHED:
        if len(_WATCHED) >= 1024:
            _WATCHED.clear()
        _WATCHED[key] = watched_policy(recorded, new)
    return _WATCHED[key]


def _handoff(event: object | None) -> str:
    if type(event) is _HandoffRequested:
        return f"{event.from_agent} -> {event.to_agent} task {event.task_id}"
    return getattr(event, "type", "timer (approval expiry)")


def replay_run(
    run: list[Recorded],
    new_policy: Policy,
    policies: dict[str, Policy],
    chain_key: bytes,
    retention_s: float = RUN_RETENTION_S,
    tombstone_s: float = TOMBSTONE_RETENTION_S,
) -> RunOutcome:
    """Decide ``run`` (a whole recorded history) again, under ``new_policy`` and as recorded
    (``retention_s``, ``tombstone_s``: the workers' run and tombstone retention, see
    ``replay_steps.Replayer``)."""
    outcome = new_run(run[0].run_id)
    run_key = outcome.run_id.encode()
    recorded = Replayer(chain_key, True, retention_s, tombstone_s)
    new = Replayer(b"", False, retention_s, tombstone_s)
    #: request ids allowed as recorded and stopped under the new policy
    stopped_now: set[str] = set()
    #: both replays are one while no rule the new policy sets otherwise could tell them
    #: apart (processors.replay_share): the proof's decide answers for both
    shared = True
    watch = None
    watched_for, watching = None, None  # the last policy a step named, and _watched of it
    n = 0
    chained = False
    for recs in steps(run):
        n += 1
        first = recs[0]
        # (the row's fields by place: replay_steps._BY_PLACE)
        text = first[10]
        event = _input_event(text, run_key)
        before = recorded.state
        context = step_context(recs)
        if chained:
            if first[11] == "":  # new_chain, inline (every step of a chained run)
                context = context._replace(anew=True)
        else:
            chained = any(r[12] is not None for r in recs)
        policy = policies[first[5]]
        if shared:
            if policy is not watched_for:  # (a run's steps name one policy, nearly always)
                watched_for, watching = policy, _watched(policy, new_policy)
            if watching is None:
                shared, new.state = False, before  # the two part here
            else:
                policy, watch = watching
                watch.diverged = False
        as_recorded = recorded.step(recs, event, context, policy)
        if recorded.evicted:  # the worker's sweep, not policy: the new policy's replay too
            context = context._replace(evicted=True)
        elif recorded.forgotten:  # so is its forgetting of the run's tombstone
            context = context._replace(anew=True)
        if shared and watch.diverged:  # type: ignore[union-attr]
            shared, new.state = False, before  # the two part here
        as_new = as_recorded if shared else new.step(recs, event, context, new_policy)
        outcome.decisions += len(recs)
        if type(event) is _HandoffCompleted and event.request_id in stopped_now:
            outcome.saved_usd += event.cost_usd  # (stopped_now grows on requests only)
        if len(recs) == 1 == len(as_recorded) == len(as_new):
            # most steps: one decision, reproduced, the same outcome under the new policy
            other = as_new[0]
            if (
                other.outcome == first[2]
                and other.reason == first[3]
                and faithful(first, as_recorded[0])
            ):
                continue
        if shared and not _reproduced(recs, as_recorded):
            # the proof did not reproduce the step (a refusal the worker made of a run it did
            # not hold, forged or not): its decisions are no answer of the new policy's
            # either, which decides the step itself from here, as a separate pass does (the
            # shared pass counted the proof's silence as the new policy's change, "→ -")
            shared, new.state = False, before
            as_new = new.step(recs, event, context, new_policy)
        _compare(outcome, n, recs, as_recorded, as_new, event, stopped_now)
    return outcome


def _reproduced(recs: list[Recorded], again: list[Decision]) -> bool:
    """Every recorded decision of a step made again by the proof (``faithful``)."""
    return len(again) == len(recs) and all(
        faithful(rec, made) for rec, made in zip(recs, again, strict=False)
    )


def _compare(
    outcome: RunOutcome,
    n: int,
    recs: list[Recorded],
    as_recorded: list[Decision],
    as_new: list[Decision],
    event: RunEvent | None,
    stopped_now: set[str],
) -> None:
    """Count step ``n``'s decisions that the proof did not reproduce, and those the new
    policy changes (the first change of the run is kept with its handoff)."""
    for i, rec in enumerate(recs):
        again = as_recorded[i] if i < len(as_recorded) else None
        if not faithful(rec, again):
            shown = label(again.outcome, again.reason) if again is not None else "-"
            outcome.unfaithful.append((n, label(rec.outcome, rec.reason), shown))
        other = as_new[i] if i < len(as_new) else None
        if other is not None and other.outcome == rec.outcome and other.reason == rec.reason:
            continue
        was = label(rec.outcome, rec.reason)
        now = label(other.outcome, other.reason) if other is not None else "-"
        if was == now:
            continue
        outcome.changed += 1
        outcome.transitions[f"{was} → {now}"] += 1
        if outcome.first_change is None:
            request_id = getattr(event, "request_id", None)
            outcome.first_change = new_change(
                n, rec.decided_at, request_id, _handoff(event), was, now
            )
        stops = other is None or other.outcome == _STOP
        if type(event) is _HandoffRequested and rec.outcome == _ALLOW and stops:
            stopped_now.add(event.request_id)
            outcome.blocked_estimate_usd += event.estimated_usd or 0.0


def rebuild_run(
    run: list[Recorded],
    policies: dict[str, Policy],
    chain_key: bytes,
    retention_s: float = RUN_RETENTION_S,
    tombstone_s: float = TOMBSTONE_RETENTION_S,
) -> tuple[RunState | None, bool]:
    """The state ``run``'s recorded history leaves (under the recorded policies), and whether
    the replay reproduced every recorded decision (the state is then the worker's)."""
    replayer = Replayer(chain_key, True, retention_s, tombstone_s)
    reproduced = True
    chained = False
    run_key = run[0].run_id.encode()
    for recs in steps(run):
        first = recs[0]
        text = first.input
        event = _input_event(text, run_key)
        context = step_context(recs)
        if chained and new_chain(recs, chained):
            context = context._replace(anew=True)
        chained = chained or any(r.chain_hash is not None for r in recs)
        again = replayer.step(recs, event, context, policies[first.policy_version])
        if reproduced:
            reproduced = len(again) == len(recs) and all(
                faithful(rec, d) for rec, d in zip(recs, again, strict=True)
            )
    return replayer.state, reproduced


def _trimmed(run: list[Recorded]) -> tuple[datetime, str]:
    """A run read as trimmed: its first row's decided_at and the link its chain starts at."""
    head = next(r for r in run if r.chain_hash is not None)
    return min(r.decided_at for r in run), head.chain_prev or ""


def replay_runs(
    runs: Iterable[list[Recorded]],
    new_policy: Policy,
    policies: dict[str, Policy],
    chain_key: bytes = b"",
    progress: Callable[[int, int], None] | None = None,
    retention_s: float = RUN_RETENTION_S,
    judge: bool = True,
    tombstone_s: float = TOMBSTONE_RETENTION_S,
) -> ReplayReport:
    """Replay every run of ``runs`` (see the module docstring); ``progress(runs, decisions)``
    is called every 1,000 runs. A run whose history cannot be replayed is partial, named
    with the reason (a recorded input that does not parse, a row that breaks the engine):
    one hostile row in the audit never ends the replay of the others. A partial run is also
    listed in ``report.broken`` (exit 7: a gate never passes by a run's absence) unless its
    history was trimmed before what was read, and retention or the read's bound could have
    trimmed it (``processors.replay_trimmed``; ``judge`` False: the caller judges, for a
    piece of a longer read or a read with a lower time bound)."""
    report = ReplayReport()
    decisions = 0
    for run in runs:
        read_first = run[0].decided_at  # runs are read by time: its oldest row
        if report.oldest is None or read_first < report.oldest:
            report.oldest = read_first
        run, why = in_chain_order(run)
        if why is not None:
            report.broken.append(run[0].run_id)
        else:
            why = is_partial(run, policies)
        if why is None:
            try:
                result = replay_run(run, new_policy, policies, chain_key, retention_s, tombstone_s)
            except EventError as exc:
                why = f"a recorded input does not parse any more: {exc}"
            except Exception as exc:  # one run's history must not end the replay of all
                why = f"replay failed: {type(exc).__name__}: {str(exc)[:300]}"
            else:
                report.runs.append(result)
                if result.transitions:  # (most runs change nothing)
                    transitions = report.transitions
                    for change, times in result.transitions.items():  # (Counter.update: Python)
                        transitions[change] += times
                decisions += result.decisions
        if why is not None:
            run_id = run[0].run_id
            report.partial[run_id] = why
            if why is TRIMMED:
                report.trimmed[run_id] = _trimmed(run)
            elif report.broken[-1:] != [run_id]:
                # a row cannot be decided (an input that does not parse or names another run,
                # an input or a policy missing): rows altered, or stripped of their chain
                # fields first, or recorded before replay could decide them (an audit older
                # than inputs, a policy record expired); a gate must not pass by the run's
                # absence, so exit 7 (fail closed), the reason named in the partial list
                report.broken.append(run_id)
        if progress is not None and (len(report.runs) + len(report.partial)) % 1000 == 0:
            progress(len(report.runs) + len(report.partial), decisions)
    if judge:
        judge_trimmed(report)
    return report
