"""Recorded history decided again with the pure engine, under a new policy and the recorded one.

Input: each run's recorded decisions in the order they were made (:class:`Recorded`, one per
audit row: the event the engine read is in ``input``, see ``processors.recorded``). They are
cut into *steps*: the decisions of one engine call share the input record's position and
time. Each step is decided twice from the run's start, by the same engine call the worker
made (``decide``, ``refuse`` for the worker's own limits, ``expire_approvals`` for a timer
step without input), with the step's recorded time as ``now``:

* under the **recorded policy** (the one its ``policy_version`` names): the *proof* that
  replay is exact. Decisions are linked into the run's hash chain like the worker links them,
  so a chained decision matches when its ``chain_hash`` does, which covers every field
  (needs the worker's ``BATON_AUDIT_CHAIN_KEY``); others match on id, outcome and reason.
* under the **new policy**: what would change, pairing the step's decisions in order.

Kill switches are operator actions, not policy: a step recorded as ``killed`` is decided with
its run killed under both policies (they are replayed as recorded). Inputs are replayed as
recorded: after a run's first difference its later steps say what the new policy would have
answered to the same requests (an orchestrator told ``stop`` may have sent others).

Not replayed: runs whose history does not start in what was read (trimmed by retention, or
started before ``--since``: their first chained decision names a predecessor) and runs with a
decision that records no input (written before inputs were recorded): reported as partial,
never decided from the middle.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from baton.processors.chain import link
from baton.processors.engine import (
    NO_KILLS,
    KillSwitches,
    Origin,
    decide,
    expire_approvals,
    refuse,
    rules_for,
)
from baton.processors.recorded import keep_links, publishable
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Outcome, Reason
from baton.schemas.events import EventError, HandoffCompleted, HandoffRequested, parse_event
from baton.schemas.policy import Policy

__all__ = [
    "REPLAY_COLUMNS",
    "Change",
    "Recorded",
    "ReplayReport",
    "RunOutcome",
    "is_partial",
    "label",
    "rebuild_run",
    "replay_run",
    "replay_runs",
    "runs_of",
]

#: the audit columns replay reads, in :class:`Recorded`'s order
REPLAY_COLUMNS: tuple[str, ...] = (
    "run_id",
    "decision_id",
    "outcome",
    "reason",
    "detail",
    "policy_version",
    "decided_at",
    "worker",
    "partition",
    "offset",
    "input",
    "chain_prev",
    "chain_hash",
)

#: refusals of the worker's own, not of its policy: replayed as refusals under both policies
_WORKER_REFUSALS = frozenset({Reason.WORKER_RUN_LIMIT.value, Reason.RUN_STATE_LIMIT.value})
# plain strings: an enum member's lookup costs ten times a global's, and these run per step
_KILLED, _RUN_STATE_LIMIT = Reason.KILLED.value, Reason.RUN_STATE_LIMIT.value
#: a run `baton up` restored stopped (its history did not replay as recorded): not policy,
#: replayed as recorded from the step that first says so
_AUDIT_UNVERIFIED = Reason.AUDIT_UNVERIFIED.value


def _step_context(recs: list[Recorded]) -> tuple[KillSwitches, Recorded | None]:
    """What a step was decided with besides its policy: the kill switch its run was under
    (a stop ``killed`` says so) and a refusal of the worker's own, as recorded."""
    kills, refusal = NO_KILLS, None
    for r in recs:
        if r.reason == _KILLED:
            kills = KillSwitches(runs=frozenset({r.run_id}))
        elif r.reason in _WORKER_REFUSALS:
            refusal = r
    return kills, refusal


@dataclass(frozen=True, slots=True)
class Recorded:
    """One recorded decision, as replay needs it (an audit row in REPLAY_COLUMNS order)."""

    run_id: str
    decision_id: str
    outcome: str
    reason: str
    detail: str | None
    policy_version: str
    decided_at: datetime
    worker: str | None
    partition: int | None
    offset: int | None
    input: str | None
    chain_prev: str | None
    chain_hash: str | None

    @classmethod
    def of(cls, d: Decision) -> Recorded:
        """A published decision as its audit row would read back (``decided_at`` set)."""
        assert d.decided_at is not None
        return cls(
            d.run_id, d.decision_id, d.outcome, d.reason, d.detail, d.policy_version,
            d.decided_at, d.worker, d.partition, d.offset, d.input, d.chain_prev, d.chain_hash,
        )  # fmt: skip


def label(outcome: str, reason: str) -> str:
    """``allow`` for a plain allow, else ``outcome:reason`` (``stop:handoff_budget_exceeded``)."""
    return "allow" if outcome == Outcome.ALLOW and reason == Reason.OK else f"{outcome}:{reason}"


@dataclass(frozen=True, slots=True)
class Change:
    """The first step of a run where the new policy decides differently."""

    step: int
    decided_at: datetime
    request_id: str | None
    handoff: str
    recorded: str
    replayed: str


@dataclass(slots=True)
class RunOutcome:
    """One run replayed: how many decisions, what changed, what the proof found."""

    run_id: str
    decisions: int = 0
    changed: int = 0
    first_change: Change | None = None
    #: decisions the recorded policy did not reproduce: (step, recorded, replayed)
    unfaithful: list[tuple[int, str, str]] = field(default_factory=list)
    #: cost reported for handoffs recorded as allowed that the new policy stops
    saved_usd: float = 0.0
    #: estimates of handoffs the new policy stops that were recorded as allowed
    blocked_estimate_usd: float = 0.0
    #: "recorded → replayed" -> how many of the run's decisions
    transitions: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class ReplayReport:
    runs: list[RunOutcome] = field(default_factory=list)
    #: run id -> why it was not replayed
    partial: dict[str, str] = field(default_factory=dict)
    #: "recorded → replayed" -> how many decisions, over every run
    transitions: Counter[str] = field(default_factory=Counter)

    @property
    def decisions(self) -> int:
        return sum(r.decisions for r in self.runs)

    @property
    def changed_runs(self) -> list[RunOutcome]:
        return [r for r in self.runs if r.changed]

    @property
    def unfaithful_runs(self) -> list[RunOutcome]:
        return [r for r in self.runs if r.unfaithful]

    @property
    def saved_usd(self) -> float:
        return sum(r.saved_usd for r in self.runs)

    @property
    def blocked_estimate_usd(self) -> float:
        return sum(r.blocked_estimate_usd for r in self.runs)


def runs_of(rows: Iterable[Sequence[object] | Recorded]) -> Iterator[list[Recorded]]:
    """Rows in REPLAY_COLUMNS order (or Recorded), sorted by run then time, one list per run."""
    run: list[Recorded] = []
    for row in rows:
        rec = row if type(row) is Recorded else Recorded(*row)  # type: ignore[arg-type]
        if run and rec.run_id != run[0].run_id:
            yield run
            run = []
        run.append(rec)
    if run:
        yield run


def _steps(run: list[Recorded]) -> list[list[Recorded]]:
    """The run's decisions cut into engine calls (same input record, same time)."""
    steps: list[list[Recorded]] = []
    last: tuple[object, ...] | None = None
    for rec in run:
        where = (rec.decided_at, rec.worker, rec.partition, rec.offset, rec.input)
        if where != last:
            steps.append([])
            last = where
        steps[-1].append(rec)
    return steps


#: what the worker's sweep decides (no input: replayed as a timer step, expire_due)
_TIMER_REASONS = frozenset({Reason.APPROVAL_EXPIRED, Reason.RESERVATION_EXPIRED})


def is_partial(run: list[Recorded], policies: dict[str, Policy]) -> str | None:
    """Why ``run`` cannot be replayed from its start (None: it can)."""
    chained = next((r for r in run if r.chain_hash is not None), None)
    if chained is not None and chained.chain_prev != "":
        return "its history does not start in what was read (trimmed by retention or --since)"
    for rec in run:
        if rec.input is None and rec.reason not in _TIMER_REASONS:
            return f"decision {rec.decision_id} records no input (audited before inputs were)"
        if rec.policy_version not in policies:
            return f"policy {rec.policy_version} is not in the audit (no policy_in_force record)"
    return None


class _Replayer:
    """Decides one run's steps under one policy (or the recorded ones), like the worker."""

    def __init__(
        self, policy_of: Callable[[Recorded], Policy], chain_key: bytes, with_inputs: bool = True
    ) -> None:
        self.policy_of = policy_of
        self.chain_key = chain_key
        #: False: the decisions are not compared field by field (the new policy's replay)
        self.with_inputs = with_inputs
        self.state: RunState | None = None

    def step(
        self,
        recs: list[Recorded],
        event: object | None,
        kills: KillSwitches,
        refusal: Recorded | None,
    ) -> list[Decision]:
        first = recs[0]
        policy = self.policy_of(first)
        now = first.decided_at
        state = self.state
        if (
            state is not None
            and state.stopped is None
            and any(r.reason == _AUDIT_UNVERIFIED for r in recs)
        ):
            self.state = state = state.copy()
            state.stopped = _AUDIT_UNVERIFIED
        before = self.state
        if event is None:
            if before is None:
                return []
            new, decided = expire_approvals(before, policy, now, kills)
        else:
            origin = Origin(first.worker, first.partition, first.offset)
            if refusal is not None:
                stored = before if refusal.reason == _RUN_STATE_LIMIT else None
                reason = Reason(refusal.reason)
                new, decided = refuse(
                    stored, event, policy, now, reason, refusal.detail or "", kills, origin
                )  # type: ignore[arg-type]
                new = new if new is not None else before
            else:
                new, decided = decide(before, event, policy, now, kills, origin)  # type: ignore[arg-type]
        self.state = new
        if new is before or new is None:  # nothing kept: nothing to link
            return [d for d in decided if d.chain_hash is None]
        if event is None or self.with_inputs is False:
            # a timer step (the sweep links what it decides as it is), or no proof wanted
            fresh = [d for d in decided if d.chain_hash is None]
            link(new, fresh, self.chain_key)
            return fresh
        # as the worker's batch step: the published copies carry the input and are what the
        # chain covers; the state keeps its decisions without it (a restored state is the
        # worker's, byte for byte); a reply answered again from the state is linked already
        published = publishable(new, decided, event, first.input)  # type: ignore[arg-type]
        link(new, [d for d in published if d.chain_hash is None], self.chain_key)
        keep_links(decided, published)
        return [d for d in published if not d.reemitted]


#: (version, version, tenant) -> _same_rules: comparing two policies' models costs more than
#: deciding a run's events; versions hash the whole documents, so they key the answer
_SAME: dict[tuple[str, str, str], bool] = {}


def _same_rules(a: Policy, b: Policy, tenant: str) -> bool:
    """``a`` and ``b`` decide ``tenant``'s runs alike (they may differ for other tenants)."""
    key = (a.version, b.version, tenant)
    same = _SAME.get(key)
    if same is None:
        if len(_SAME) >= 4096:
            _SAME.clear()
        same = _SAME[key] = (
            rules_for(a, tenant).limits == rules_for(b, tenant).limits
            and (tenant in a.tenants) == (tenant in b.tenants)
            and a.strict_tenants == b.strict_tenants
            and a.operators == b.operators
        )
    return same


def _faithful(rec: Recorded, d: Decision | None, chained: bool) -> bool:
    if d is None or d.decision_id != rec.decision_id:
        return False
    if chained and rec.chain_hash is not None:
        return d.chain_hash == rec.chain_hash
    return d.outcome == rec.outcome and d.reason == rec.reason


def _handoff(event: object | None) -> str:
    if type(event) is HandoffRequested:
        return f"{event.from_agent} -> {event.to_agent} task {event.task_id}"
    return getattr(event, "type", "timer (approval expiry)")


def replay_run(
    run: list[Recorded], new_policy: Policy, policies: dict[str, Policy], chain_key: bytes
) -> RunOutcome:
    """Decide ``run`` (a whole recorded history) again, under ``new_policy`` and as recorded."""
    outcome = RunOutcome(run[0].run_id)
    recorded = _Replayer(lambda r: policies[r.policy_version], chain_key)
    new = _Replayer(lambda r: new_policy, b"", with_inputs=False)
    #: request ids allowed as recorded and stopped under the new policy
    stopped_now: set[str] = set()
    #: both replays are one while the new policy's rules for the run equal the recorded ones
    shared = True
    same: dict[str, bool] = {}
    for n, recs in enumerate(_steps(run), 1):
        text = recs[0].input
        event = parse_event(text.encode(), run[0].run_id.encode()) if text is not None else None
        before = recorded.state
        kills, refusal = _step_context(recs)
        as_recorded = recorded.step(recs, event, kills, refusal)
        if shared:
            version = recs[0].policy_version
            if version not in same:
                state = recorded.state or before
                same[version] = state is not None and _same_rules(
                    new_policy, policies[version], state.tenant
                )
            if not same[version]:
                shared, new.state = False, before  # the two part here
        as_new = as_recorded if shared else new.step(recs, event, kills, refusal)
        outcome.decisions += len(recs)
        for i, rec in enumerate(recs):
            again = as_recorded[i] if i < len(as_recorded) else None
            if not _faithful(rec, again, True):
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
                outcome.first_change = Change(
                    n, rec.decided_at, request_id, _handoff(event), was, now
                )
            stops = other is None or other.outcome == Outcome.STOP
            if type(event) is HandoffRequested and rec.outcome == Outcome.ALLOW and stops:
                stopped_now.add(event.request_id)
                outcome.blocked_estimate_usd += event.estimated_usd or 0.0
        if type(event) is HandoffCompleted and event.request_id in stopped_now:
            outcome.saved_usd += event.cost_usd
    return outcome


def rebuild_run(
    run: list[Recorded], policies: dict[str, Policy], chain_key: bytes
) -> tuple[RunState | None, bool]:
    """The state ``run``'s recorded history leaves (under the recorded policies), and whether
    the replay reproduced every recorded decision (the state is then the worker's)."""
    replayer = _Replayer(lambda r: policies[r.policy_version], chain_key)
    faithful = True
    run_key = run[0].run_id.encode()
    for recs in _steps(run):
        text = recs[0].input
        event = parse_event(text.encode(), run_key) if text is not None else None
        again = replayer.step(recs, event, *_step_context(recs))
        if faithful:
            faithful = len(again) == len(recs) and all(
                _faithful(rec, d, True) for rec, d in zip(recs, again, strict=True)
            )
    return replayer.state, faithful


def replay_runs(
    runs: Iterable[list[Recorded]],
    new_policy: Policy,
    policies: dict[str, Policy],
    chain_key: bytes = b"",
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """Replay every run of ``runs`` (see the module docstring); ``progress(runs, decisions)``
    is called every 1,000 runs."""
    report = ReplayReport()
    decisions = 0
    for run in runs:
        why = is_partial(run, policies)
        if why is None:
            try:
                result = replay_run(run, new_policy, policies, chain_key)
            except EventError as exc:
                why = f"a recorded input does not parse any more: {exc}"
            except Exception as exc:  # one run's history must not end the replay of all
                why = f"replay failed: {type(exc).__name__}: {str(exc)[:300]}"
            else:
                report.runs.append(result)
                report.transitions.update(result.transitions)
                decisions += result.decisions
        if why is not None:
            report.partial[run[0].run_id] = why
        if progress is not None and (len(report.runs) + len(report.partial)) % 1000 == 0:
            progress(len(report.runs) + len(report.partial), decisions)
    return report


def usd(amount: float) -> str:
    return f"${Decimal(repr(amount)).quantize(Decimal('0.01')):,}"
