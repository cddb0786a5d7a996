"""The governance decision as a pure function: (state, event, policy, now) -> (state, decisions).

No I/O, no clock, no randomness: Faust, Kafka and ClickHouse only carry events in and
decisions out. The input state is never modified (a changed copy is returned), so replay,
what-if and property tests can call it freely.

Where things are: the rule checks that read only the run's state and the limits, one
function each naming its key, in processors/rule_checks.py; the policy's compiled form
(TenantRules, rules_for, the budget thresholds) in processors/policy_rules.py; the key a
decided event is remembered under in processors/dedup_keys.py. This module orders the rules
(``_check``), applies their outcome to the state and builds the decisions.

Pre-handoff rules, in ARCHITECTURE.md's order, first failure wins:
 1. kill switch (run, tenant, global)                 -> stop killed
 2. sticky stop / finished run                        -> stop <original reason>
 3. ownership lock; role map                          -> ownership_conflict / role_not_permitted
 4. multi_agent.max_agents_per_run                    -> agent_limit_exceeded
 5. multi_agent.max_handoffs                          -> handoff_budget_exceeded
 6. max_delegation_depth; detect_delegation_cycles;
    max_bounces (two agents handing work back and forth) -> delegation_depth_exceeded / _cycle
 7. shared_max_usd, shared_max_tool_calls, max_run_seconds, with
    reservations of estimated_usd / estimated_tool_calls -> shared_budget_exceeded;
    max_steps                                          -> step_budget_exceeded
 8. tools.allow / tools.block, roles.<to_agent>.tools over the handoff's tool and tools;
    require_approval_for                               -> tool_not_permitted / approval_required
 9. allow: the task is locked to to_agent, the estimate reserved (for
    reservation_ttl_seconds, if set).
Post-handoff: the completion's cost, tool calls and steps count; over a budget, or a tool the
agent may not use, stops the run; a status in release_ownership_on frees the task.
Due work (the worker's sweep, or the run's next event): approvals past approval.ttl_seconds
are stopped (approval_expired), reservations past their TTL released (reservation_expired).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import orjson
from pydantic import BaseModel

from baton.processors.dedup_keys import APPROVAL, REFUSED, dedup_key, with_digest
from baton.processors.policy_rules import (
    BUDGET_TOLERANCE,
    HARD_MAX_HANDOFFS,
    TenantRules,
    rules_for,
)
from baton.processors.rule_checks import (
    bounce_rule,
    budget_exhausted,
    count_bounce,
    depth_of,
    estimate_over,
    on_chain,
    release_ownership,
    reservation_for,
    spent_over,
    tool_rule,
    used_tools_rule,
)
from baton.processors.state import (
    MAX_PENDING_APPROVALS,
    RECENT_REPLIES,
    SEEN_LIMIT,
    PendingApproval,
    RunState,
    TaskNode,
)
from baton.schemas.decision import Decision, Outcome, Phase, Reason, decision_id_for
from baton.schemas.errors import PolicyError
from baton.schemas.events import (
    MAX_RUN_COUNT,
    MAX_RUN_USD,
    ApprovalDenied,
    ApprovalGranted,
    HandoffCompleted,
    HandoffRequested,
    KillSwitch,
    KillSwitchReleased,
    PolicyUpdated,
    RunEvent,
    RunFinished,
)
from baton.schemas.policy import Policy, parse_policy
from baton.schemas.signing import (
    approval_payload,
    control_payload,
    parse_public_key,
    policy_hash,
    verify,
)

_M = TypeVar("_M", bound=BaseModel)
_V = TypeVar("_V")

__all__ = [
    "BUDGET_TOLERANCE",
    "HARD_MAX_HANDOFFS",
    "NO_KILLS",
    "KillSwitches",
    "Origin",
    "PolicyStep",
    "TenantRules",
    "apply_control",
    "apply_policy_update",
    "approval_id_for",
    "command_refused",
    "decide",
    "evict",
    "expire_approvals",
    "expire_due",
    "is_evictable",
    "new_state",
    "next_due",
    "policy_update_record",
    "refuse",
    "refused_answer_id",
    "refused_command_id",
    "request_digest",
    "rules_for",
]


#: stops that end the run for good (the run stays stopped); other stops refuse one handoff
#: (a completion's stop, whatever its reason, also ends the run: see _post_handoff)
STICKY_REASONS = frozenset(
    {
        Reason.HANDOFF_BUDGET_EXCEEDED,
        Reason.SHARED_BUDGET_EXCEEDED,
        Reason.STEP_BUDGET_EXCEEDED,
    }
)
#: stops that shadow mode never turns into allows: a kill switch, and the worker's own
#: limits and protocol refusals (they are not policy to try out)
NEVER_SHADOWED = frozenset(
    {
        Reason.KILLED,
        Reason.RUN_STATE_LIMIT,
        Reason.RUN_EXPIRED,
        Reason.AUDIT_UNVERIFIED,
        Reason.WORKER_RUN_LIMIT,
        Reason.REQUEST_ID_REUSED,
        Reason.UNKNOWN_TENANT,
        Reason.TENANT_MISMATCH,
        Reason.REPLY_NOT_KEPT,
        Reason.REQUEST_EXPIRED,
    }
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Enum members the hot path uses, as module globals: on CPython 3.11 ``Outcome.STOP`` costs
# about ten times a global lookup, and a decision touches several (bench/RESULTS.md)
_ALLOW, _STOP, _RECORDED, _APPROVAL_REQUIRED = (
    Outcome.ALLOW,
    Outcome.STOP,
    Outcome.RECORDED,
    Outcome.APPROVAL_REQUIRED,
)
_PRE_HANDOFF, _POST_HANDOFF = Phase.PRE_HANDOFF, Phase.POST_HANDOFF
_OK, _WITHIN_BUDGET = Reason.OK, Reason.WITHIN_BUDGET
_SHARED = Reason.SHARED_BUDGET_EXCEEDED
#: the phase as plain text for decision_id_for: formatting a StrEnum member in an f-string
#: runs Enum.__format__ in Python (same text, so the same id)
_PHASE_TEXT = {phase: phase.value for phase in Phase}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the event was read: recorded on its decisions (worker id, partition, offset)."""

    worker: str | None = None
    partition: int | None = None
    offset: int | None = None


_NO_ORIGIN = Origin()


@dataclass(frozen=True, slots=True)
class KillSwitches:
    """The kill switches in force, from gov.control: runs, tenants, or everything."""

    runs: frozenset[str] = frozenset()
    tenants: frozenset[str] = frozenset()
    everything: bool = False
    #: "scope:target" -> event time of the newest signed command applied to it: an older
    #: one arriving later (a replayed release) is refused
    latest: tuple[tuple[str, float], ...] = ()

    def killed(self, run_id: str, tenant: str) -> bool:
        return self.everything or run_id in self.runs or tenant in self.tenants

    def __bool__(self) -> bool:
        return self.everything or bool(self.runs) or bool(self.tenants)


NO_KILLS = KillSwitches()


def approval_id_for(request: HandoffRequested) -> str:
    """The approval id of a handoff that needs one: derived from the run, the request id and
    the request's digest, so it names this request only (an approver signs it, and the same
    request id reused for another request asks for another approval)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{len(request.run_id)}:{request.run_id}\x1f{request.request_id}\x1f".encode())
    h.update(request_digest(request).encode())
    return "apr_" + h.hexdigest()


#: an empty 8-byte BLAKE2b, copied per digest (cheaper than a new one)
_DIGEST = hashlib.blake2b(digest_size=8)


def request_digest(event: HandoffRequested | HandoffCompleted) -> str:
    """What a request id stands for: every field but the client's timing (``event_time`` and
    ``decide_by``: a client stamps a retry anew), so a retry matches and the same id reused
    for another request does not."""
    fields = dict(event.__dict__)
    del fields["event_time"]
    fields.pop("decide_by", None)
    # fields added after digests were first kept, left out at their defaults: an event
    # without them keeps its digest, and so its decision ids and approval id, across versions
    if fields.get("tools", ()) is None:
        del fields["tools"]
    if fields.get("steps") == 0:
        del fields["steps"]
    h = _DIGEST.copy()
    h.update(orjson.dumps(fields))
    return h.hexdigest()


def new_state(run_id: str, tenant: str, now: datetime) -> RunState:
    return RunState.new(run_id, tenant, now.timestamp())


def is_evictable(state: RunState, now: datetime, retention_s: float) -> bool:
    """A run idle for ``retention_s`` (finished or not) may leave the table.

    A finished run is kept for the retention too, so a late redelivery of its events is still
    answered from its state rather than decided as a new run. Pending approvals keep a run
    until they are resolved or swept as expired, whatever its age.
    """
    if state.pending:
        return False
    return now.timestamp() - state.last_event_at >= retention_s


def evict(
    state: RunState, now: datetime, retention_s: float, tombstone_retention_s: float
) -> RunState | None:
    """What the table keeps of a run at ``now``: the run itself, its tombstone, or nothing.

    A run idle for ``retention_s`` (and no approval pending) becomes a tombstone: its
    tenant, counters, spend and stop survive, so a late handoff is still stopped (with the
    original reason, ``run_finished``, or ``run_expired`` for a run that was only idle) and a
    late cost still counts. A tombstone is forgotten ``tombstone_retention_s`` after it was
    made. Returns ``state`` itself when nothing changes.
    """
    now_ts = now.timestamp()
    if state.evicted_at is not None:
        # counted from its last event, not from the eviction: a run that keeps knocking
        # keeps its tombstone
        since = max(state.evicted_at, state.last_event_at)
        return None if now_ts - since >= tombstone_retention_s else state
    if is_evictable(state, now, retention_s):
        return state.tombstone(now_ts)
    return state


def next_due(state: RunState, retention_s: float, tombstone_retention_s: float) -> float:
    """When the sweep next has work on ``state`` (a POSIX time): an approval to expire, the
    run to turn into a tombstone, or the tombstone to forget."""
    if state.evicted_at is not None:
        return max(state.evicted_at, state.last_event_at) + tombstone_retention_s
    due = state.last_event_at + retention_s
    for p in state.pending.values():
        if p.expires_at < due:
            due = p.expires_at
    reserved_due = state.reserved_due
    if reserved_due is not None and reserved_due < due:
        due = reserved_due
    return due


# =========================================================================== entry points


def decide(
    state: RunState | None,
    event: RunEvent,
    policy: Policy,
    now: datetime,
    kills: KillSwitches = NO_KILLS,
    origin: Origin = _NO_ORIGIN,
) -> tuple[RunState, list[Decision]]:
    """Decide one run event. ``state`` is None for a run Baton has not seen yet."""
    # One dedup key per logical event; approvals share one key per approval_id, so the first
    # resolution wins and every later grant/deny of it gets the same answer. Dispatch is on
    # the exact type: isinstance() on pydantic models goes through their metaclass's
    # __instancecheck__, slow when it misses; and type(event) is X, not a saved type, so
    # that mypy narrows without cast() calls.
    key = dedup_key(event)
    approval = type(event) is ApprovalGranted or type(event) is ApprovalDenied
    digest = reused = None
    if type(event) is HandoffRequested or type(event) is HandoffCompleted:
        digest = request_digest(event)
    if state is not None:
        # a redelivery or a client retry: re-emit what was decided, change nothing
        if approval:
            # a grant that was refused (self-approval, unknown approver) is remembered under
            # its own key: look there first, or its redelivery would be decided again, or
            # answered with whatever later resolved the approval
            refused = _refused_key(event)  # type: ignore[arg-type]
            if state.has_seen(refused):
                return state, _replies(state, refused, event, policy, now, kills, origin)
        # state.has_seen(key), inline: it runs for every event
        mark = state.seen.get(key)
        if key in state.fresh or (mark is not None and mark > state.marks - SEEN_LIMIT):
            if digest is None or state.digest_of(key) in (digest, None):
                replies = state.replies(key)
                if replies is not None:
                    return state, replies
                # a retry of an event decided long ago (its decision is no longer kept):
                # answered, never silently (a handoff is stopped: fail closed)
                return state, [_protocol(state, event, policy, now, kills, origin, "not_kept")]
            if type(event) is HandoffRequested:
                # the same id for another request: refused, never the first one's answer
                return state, [_protocol(state, event, policy, now, kills, origin, digest)]
            # a cost report under a reused id: money spent is spent, so it counts, under
            # its own key (a redelivery of it is not counted twice) and its own decision id
            key = with_digest(key, digest)
            reused = digest
            if state.has_seen(key):
                return state, _replies(state, key, event, policy, now, kills, origin)
        elif type(event) is HandoffCompleted and state.has_seen(with_digest(key, digest)):  # type: ignore[arg-type]
            # a reused report's copy, after the first report's key left the window
            own = with_digest(key, digest)  # type: ignore[arg-type]
            return state, _replies(state, own, event, policy, now, kills, origin)
        if type(event) is HandoffRequested and _holds_request(state, event, digest):
            return state, [_protocol(state, event, policy, now, kills, origin, digest)]
        if event.tenant != state.tenant and type(event) is not HandoffCompleted:
            return state, [_protocol(state, event, policy, now, kills, origin, "tenant")]
    now_ts = now.timestamp()
    if state is None:
        if policy.strict_tenants and event.tenant not in policy.tenants:
            return refuse(
                None,
                event,
                policy,
                now,
                Reason.UNKNOWN_TENANT,
                f"tenant {event.tenant!r} is not under tenants (strict_tenants is on; names are "
                f"compared exactly)",
                kills,
                origin,
            )  # type: ignore[return-value]
        st = new_state(event.run_id, event.tenant, now)
    else:
        st = state.copy()
        if now_ts > st.last_event_at:
            st.last_event_at = now_ts
    ctx = _Ctx(
        rules_for(policy, st.tenant),
        now,
        now_ts,
        kills,
        origin,
        event.request_id if digest is not None else None,  # type: ignore[union-attr]
        digest,
    )
    reserved_due = st.reserved_due
    out = (
        _expire(st, ctx)
        if st.pending or (reserved_due is not None and reserved_due <= now_ts)
        else None
    )
    if out and st.has_seen(key):  # the sweep just resolved the approval this event is about
        replies = st.replies(key) or []
        return st, out + [d for d in replies if d not in out]
    if type(event) is HandoffRequested:
        decisions = _pre_handoff(st, event, ctx)
    elif type(event) is HandoffCompleted:
        decisions = _post_handoff(st, event, ctx)
    elif type(event) is ApprovalGranted or type(event) is ApprovalDenied:
        decisions = _approval(st, event, ctx)
        if decisions[0].outcome is _RECORDED:
            # a grant that could not be used leaves the approval pending: it must not burn
            # the approval's key, or the real approver's grant would be taken for a duplicate
            key = _refused_key(event)
    elif type(event) is RunFinished:
        decisions = _finish(st, event, ctx)
    else:  # pragma: no cover - the union is closed
        raise TypeError(f"not a run event: {type(event).__name__}")
    # (the request's digest is in its decisions' ids, see _decision: another request under
    # the same id, after the dedup window, never replaces this one's record in the audit)
    if reused is not None:
        decisions[0].detail = (
            f"request_id {event.request_id} reused for another report: counted, "  # type: ignore[union-attr]
            "under its own decision id; use a new request_id per request"
        )
    # keeps the decisions, not the list: the caller may change it
    st.remember(key, decisions, digest)
    return st, out + decisions if out else decisions


def _replies(
    state: RunState,
    key: str,
    event: RunEvent,
    policy: Policy,
    now: datetime,
    kills: KillSwitches,
    origin: Origin,
) -> list[Decision]:
    """The decisions kept for ``key``, or a reply_not_kept answer when they are gone."""
    replies = state.replies(key)
    if replies is not None:
        return replies
    return [_protocol(state, event, policy, now, kills, origin, "not_kept")]


def _id_covers(d: Decision, run_id: str, digest: str) -> None:
    d.decision_id = decision_id_for(run_id, f"{d.request_id}#{digest}", _PHASE_TEXT[d.phase])


def _holds_request(state: RunState, event: HandoffRequested, digest: str | None) -> bool:
    """True when a request id no longer among the dedup marks still holds a reservation, or a
    pending approval for another request: deciding it anew would overwrite them."""
    rid = event.request_id
    if rid in state.reserved:
        return True
    for p in state.pending.values():
        if p.request.request_id == rid and request_digest(p.request) != digest:
            return True
    return False


def refuse(
    state: RunState | None,
    event: RunEvent,
    policy: Policy,
    now: datetime,
    reason: Reason,
    detail: str,
    kills: KillSwitches = NO_KILLS,
    origin: Origin = _NO_ORIGIN,
) -> tuple[RunState | None, list[Decision]]:
    """Stop ``event``'s run for a reason of the worker's, not of the policy: the run's state
    would outgrow ``run_state_limit``, or the worker holds too many runs (``worker_run_limit``).

    ``state`` is the run's state before the event (None for a run the worker will not take
    on: the decision is made, nothing is kept). A kept run is stopped for good with ``reason``
    (the event is remembered like any other, so a retry gets the same stop); a reported cost
    still counts. Pure, like :func:`decide`.
    """
    keep = state is not None
    st = state.copy() if state is not None else new_state(event.run_id, event.tenant, now)
    ctx = _Ctx(rules_for(policy, st.tenant), now, now.timestamp(), kills, origin)
    if keep and st.stopped is None:
        st.stopped = reason
    key, digest, phase = dedup_key(event), None, Phase.CONTROL
    request_id = f"{st.run_id}:finished"
    req = done = None
    if type(event) is HandoffRequested:
        digest, phase, req = request_digest(event), _PRE_HANDOFF, event
        request_id = event.request_id
    elif type(event) is HandoffCompleted:
        digest, phase, done = request_digest(event), _POST_HANDOFF, event
        request_id = event.request_id
        _count_cost(st, event)
    elif type(event) is ApprovalGranted or type(event) is ApprovalDenied:
        key, phase, request_id = _refused_key(event), Phase.APPROVAL, _refused_request_id(event)
    decision = _decision(
        st,
        ctx,
        request_id,
        phase,
        Outcome.STOP,
        reason,
        event.event_time,
        req,
        to_agent=done.agent if done is not None else None,
        task_id=done.task_id if done is not None else None,
        handoff_status=done.status if done is not None else None,
        detail=detail,
    )
    if keep:
        st.remember(key, [decision], digest)
    return (st if keep else None), [decision]


def _protocol(
    state: RunState,
    event: RunEvent,
    policy: Policy,
    now: datetime,
    kills: KillSwitches,
    origin: Origin,
    why: str,
) -> Decision:
    """An answer for an event Baton will not decide, the state unchanged: a request id reused
    for another request (``why`` is its digest), a retry whose decision is no longer kept
    (``"not_kept"``), or an event for another tenant than the run's (``"tenant"``).

    A handoff gets a stop (fail closed), anything else a recorded refusal. The decision id
    covers ``why``, so it never replaces another decision's record in the audit; the same
    event again is answered the same way.
    """
    ctx = _Ctx(rules_for(policy, state.tenant), now, now.timestamp(), kills, origin)
    request = type(event) is HandoffRequested
    if type(event) is HandoffRequested or type(event) is HandoffCompleted:
        request_id, phase = event.request_id, (_PRE_HANDOFF if request else _POST_HANDOFF)
    elif type(event) is ApprovalGranted or type(event) is ApprovalDenied:
        request_id, phase = _refused_request_id(event), Phase.APPROVAL
    else:
        request_id, phase = f"{state.run_id}:finished", Phase.CONTROL
    if why == "not_kept":
        reason: str = Reason.REPLY_NOT_KEPT
        detail = (
            "decided long ago; its decision is no longer kept (the run keeps the newest "
            f"{RECENT_REPLIES}): read it from the audit, or use a new request_id"
        )
    elif why == "tenant":
        reason = Reason.TENANT_MISMATCH
        detail = f"the run belongs to tenant {state.tenant!r}, not {event.tenant!r}"
    else:
        reason = Reason.REQUEST_ID_REUSED
        detail = (
            f"request_id {request_id} was already used for another request; use a new "
            "request_id per request (a retry must repeat the request exactly)"
        )
    d = _decision(
        state,
        ctx,
        f"{request_id}#{why}",
        phase,
        Outcome.STOP if request else Outcome.RECORDED,
        reason,
        event.event_time,
        event if request else None,  # type: ignore[arg-type]
        detail=detail,
    )
    d.request_id = request_id
    return d


def expire_due(
    state: RunState, policy: Policy, now: datetime, kills: KillSwitches = NO_KILLS
) -> tuple[RunState, list[Decision]]:
    """The worker's timer: stop every pending approval of the run whose TTL has passed and
    release every reservation whose TTL has passed. A pure function of (state, now): replay
    repeats it at the recorded time. ``state`` itself when nothing is due."""
    now_ts = now.timestamp()
    due = state.reserved_due
    if not (due is not None and due <= now_ts) and not any(
        p.expires_at <= now_ts for p in state.pending.values()
    ):
        return state, []
    st = state.copy()
    ctx = _Ctx(rules_for(policy, st.tenant), now, now_ts, kills, _NO_ORIGIN)
    return st, _expire(st, ctx)


#: the former name of expire_due (it expires reservations too now)
expire_approvals = expire_due


def apply_control(
    kills: KillSwitches,
    event: KillSwitch | KillSwitchReleased,
    policy: Policy,
    now: datetime,
    origin: Origin = _NO_ORIGIN,
) -> tuple[KillSwitches, Decision]:
    """Apply a kill switch (or its release) and return the control record for the audit.

    With ``operators`` in the policy, only a command signed by a listed operator counts, and
    only if it is newer than the last one applied to the same target (a replayed release
    cannot lift a later kill). A refused command changes nothing and is recorded with why.
    """
    on = isinstance(event, KillSwitch)
    target = {"run": event.run_id, "tenant": event.tenant, "global": "*"}[event.scope] or "*"
    slot = f"{event.scope}:{target}"
    refused = command_refused(event, policy, dict(kills.latest).get(slot))
    reason: str = Reason.KILL_SWITCH if on else Reason.KILL_SWITCH_RELEASED
    detail = f"scope={event.scope} target={target} reason={event.reason}"
    if refused is not None:
        reason, why = refused
        detail = f"{detail}; refused: {why}"
    else:
        runs, tenants, everything = set(kills.runs), set(kills.tenants), kills.everything
        if event.scope == "run":
            (runs.add if on else runs.discard)(event.run_id or "")
        elif event.scope == "tenant":
            (tenants.add if on else tenants.discard)(event.tenant or "")
        else:
            everything = on
        latest = kills.latest
        if policy.operators:
            latest = (
                *((k, t) for k, t in latest if k != slot),
                (slot, event.event_time.timestamp()),
            )
        kills = KillSwitches(frozenset(runs), frozenset(tenants), everything, latest)
    request_id = f"{event.type}:{event.scope}:{target}:{event.event_time.isoformat()}"
    if refused is not None:
        # its own id: a forged copy of a real command must not replace the real one's record
        request_id = refused_command_id(request_id, event)
    return kills, _control_record(
        request_id,
        event.run_id or "*",
        event.tenant or "*",
        reason,
        event,
        policy,
        now,
        origin,
        detail,
    )


def command_refused(
    event: KillSwitch | KillSwitchReleased | PolicyUpdated,
    policy: Policy,
    latest: float | None = None,
) -> tuple[Reason, str] | None:
    """Why an operator's command does not count under ``policy`` (None: it does).

    Without ``operators`` in the policy every command counts (names are trusted: keep the
    control topic's ACL tight, docs/security.md). ``latest``: the event time of the newest
    command applied to the same target; an older one is a replay.
    """
    if not policy.operators:
        return None
    if not event.signature:
        return Reason.CONTROL_UNSIGNED, "operators is set: only signed commands count"
    text = policy.operators.get(event.operator)
    if text is None:
        return Reason.UNKNOWN_OPERATOR, f"{event.operator} is not in operators"
    if type(event) is PolicyUpdated:
        sha = policy_hash(event.policy_yaml)
        if event.policy_sha is not None and event.policy_sha != sha:
            return Reason.BAD_SIGNATURE, "policy_sha is not the hash of policy_yaml"
        payload = control_payload(
            event.type, "global", "*", event.operator, "", event.event_time, sha
        )
    else:
        target = {"run": event.run_id, "tenant": event.tenant, "global": "*"}[event.scope] or "*"
        payload = control_payload(
            event.type, event.scope, target, event.operator, event.reason, event.event_time
        )
    if not verify(parse_public_key(text), payload, event.signature):
        return Reason.BAD_SIGNATURE, f"the signature is not {event.operator}'s over this command"
    if latest is not None and event.event_time.timestamp() <= latest:
        return (
            Reason.CONTROL_REPLAYED,
            "signed no later than a command already applied to the same target (a replay)",
        )
    return None


def policy_update_record(
    event: PolicyUpdated,
    before: Policy,
    after: Policy | None,
    now: datetime,
    origin: Origin = _NO_ORIGIN,
    refused: tuple[str, str] | None = None,
) -> Decision:
    """The audit record of a policy update: who, the policy hashes before and after, or why
    it was refused (``after`` None)."""
    request_id = (
        f"{event.type}:{policy_hash(event.policy_yaml)[:16]}:{event.event_time.isoformat()}"
    )
    if refused is not None:
        reason, detail = refused[0], f"refused: {refused[1]}; policy in force {before.version}"
        request_id = refused_command_id(request_id, event)
    else:
        assert after is not None
        reason, detail = Reason.POLICY_UPDATED, f"policy {before.version} -> {after.version}"
    return _control_record(
        request_id, "*", "*", reason, event, after or before, now, origin, detail
    )


@dataclass(frozen=True, slots=True)
class PolicyStep:
    """The policy in force after one ``policy_updated`` event, and what to publish about it."""

    policy: Policy
    #: event time of the last signed update applied (a later one must be newer)
    signed_at: float | None
    #: the audit record (applied or refused); None when the text is not a valid policy
    record: Decision | None
    #: why the text is not a valid policy (the event's dead letter)
    error: str | None = None

    @property
    def applied(self) -> bool:
        return self.record is not None and self.record.reason == Reason.POLICY_UPDATED


def apply_policy_update(
    policy: Policy,
    signed_at: float | None,
    event: PolicyUpdated,
    now: datetime,
    origin: Origin = _NO_ORIGIN,
    source: str = "policy_updated",
) -> PolicyStep:
    """One policy update, verified against the policy in force (its ``operators``): the
    workers' control follower and `baton policy current` fold the control topic with it."""
    refused = command_refused(event, policy, signed_at)
    if refused is not None:
        return PolicyStep(
            policy, signed_at, policy_update_record(event, policy, None, now, origin, refused)
        )
    try:
        new = parse_policy(event.policy_yaml, source)
    except PolicyError as exc:
        return PolicyStep(policy, signed_at, None, str(exc))
    if policy.operators:
        signed_at = event.event_time.timestamp()
    return PolicyStep(new, signed_at, policy_update_record(event, policy, new, now, origin))


def _event_digest(event: KillSwitch | KillSwitchReleased | PolicyUpdated) -> str:
    h = _DIGEST.copy()
    h.update(event.to_json())
    return h.hexdigest()


def _control_record(
    request_id: str,
    run_id: str,
    tenant: str,
    reason: str,
    event: KillSwitch | KillSwitchReleased | PolicyUpdated,
    policy: Policy,
    now: datetime,
    origin: Origin,
    detail: str,
) -> Decision:
    return Decision(
        decision_id=decision_id_for(run_id, request_id, Phase.CONTROL),
        request_id=request_id,
        run_id=run_id,
        tenant=tenant,
        phase=Phase.CONTROL,
        outcome=Outcome.RECORDED,
        reason=reason,
        approver=event.operator,
        policy_version=policy.version,
        event_time=event.event_time,
        decided_at=now,
        worker=origin.worker,
        partition=origin.partition,
        offset=origin.offset,
        detail=detail,
    )


# =========================================================================== internals


@dataclass(slots=True)
class _Ctx:
    rules: TenantRules
    now: datetime
    now_ts: float
    kills: KillSwitches
    origin: Origin
    #: the event's own request id and its digest: its decisions' ids cover the digest
    request_id: str | None = None
    digest: str | None = None


def _refused_request_id(ev: ApprovalGranted | ApprovalDenied) -> str:
    # the whole event's digest: a redelivery repeats it; anything else (a new attempt after
    # the approvers list changed, or the real approver's signed grant after a forgery that
    # named the same approver and time) is another event, decided afresh, with its own
    # decision id (so no refusal replaces another's record in the audit)
    h = _DIGEST.copy()
    h.update(ev.to_json())
    return f"{ev.type}:{ev.approval_id}:{ev.approver}#{h.hexdigest()}"


def refused_answer_id(ev: ApprovalGranted | ApprovalDenied) -> str:
    """The ``request_id`` of the record that refuses the answer ``ev`` (clients wait on it)."""
    return _refused_request_id(ev)


def refused_command_id(
    request_id: str, event: KillSwitch | KillSwitchReleased | PolicyUpdated
) -> str:
    """The ``request_id`` of the record that refuses a command whose own would be
    ``request_id`` (its own id: a forged copy never replaces the real command's record)."""
    return f"{request_id}:refused:{_event_digest(event)}"


def _refused_key(ev: ApprovalGranted | ApprovalDenied) -> str:
    return f"{REFUSED}{_refused_request_id(ev)}@{ev.event_time.isoformat()}"


def _decision(
    st: RunState,
    ctx: _Ctx,
    request_id: str,
    phase: Phase,
    outcome: Outcome,
    reason: str,
    event_time: datetime | None,
    req: HandoffRequested | None = None,
    *,
    owner: str | None = None,
    from_agent: str | None = None,
    to_agent: str | None = None,
    task_id: str | None = None,
    parent_task_id: str | None = None,
    depth: int = 0,
    handoff_status: str | None = None,
    approval_id: str | None = None,
    approval_expires_at: datetime | None = None,
    approver: str | None = None,
    detail: str | None = None,
) -> Decision:
    """The record of one decision; the agents, task, action and tool come from ``req`` if given."""
    rules = ctx.rules
    shadow = None
    if (
        rules.shadow_mode
        and (outcome is _STOP or outcome is _APPROVAL_REQUIRED)
        and reason not in NEVER_SHADOWED
    ):
        # shadow (dry-run): record what would have happened, enforce nothing
        shadow = outcome
        outcome = _RECORDED if phase is _POST_HANDOFF else _ALLOW
    action = tool = None
    if req is not None:
        from_agent, to_agent, task_id = req.from_agent, req.to_agent, req.task_id
        parent_task_id, action, tool = req.parent_task_id, req.action, req.tool
    origin = ctx.origin
    spent, reserved = st.spent_usd, st.reserved_usd
    # positional, in Decision's field order: about three times cheaper than 32 keywords,
    # and this runs once per decision (see bench/RESULTS.md)
    return Decision(
        decision_id_for(
            st.run_id,
            f"{request_id}#{ctx.digest}" if request_id == ctx.request_id else request_id,
            _PHASE_TEXT[phase],
        ), request_id, st.run_id,
        st.tenant, phase, outcome, reason, owner,
        from_agent, to_agent, task_id, parent_task_id,
        action, depth, st.handoff_count, (_ROUNDED.get(spent) or _usd(spent)) if spent else 0.0,
        st.tool_calls, handoff_status,
        rules.fallback_for(reason) if (shadow or outcome) is _STOP else None,
        approval_id, approval_expires_at, approver, rules.version,
        event_time, ctx.now, origin.worker, origin.partition, origin.offset,
        shadow, tool, (_ROUNDED.get(reserved) or _usd(reserved)) if reserved else 0.0, detail,
    )  # fmt: skip


#: round(usd, 9) of recent amounts: a run's spend is the same on each of its decisions until
#: the next completion, and round() with digits formats and re-parses the number (~2,000
#: instructions, two per decision; bench/RESULTS.md)
_ROUNDED: dict[float, float] = {}


def _usd(amount: float) -> float:
    rounded = _ROUNDED.get(amount)
    if rounded is None:
        if len(_ROUNDED) >= 65_536:
            _ROUNDED.clear()
        rounded = _ROUNDED[amount] = round(amount, 9)
    return rounded


def _check(
    st: RunState,
    req: HandoffRequested,
    ctx: _Ctx,
    depth: int,
    node: TaskNode | None,
    *,
    gate: bool,
) -> tuple[Outcome, str, str | None]:
    """Rules 1-8 for one handoff (``node``: the task's, if it has one); ``gate`` False skips
    the approval gate (after a grant)."""
    rules = ctx.rules
    if ctx.kills is not NO_KILLS and ctx.kills.killed(st.run_id, st.tenant):
        return Outcome.STOP, Reason.KILLED, None
    if st.finished:
        return Outcome.STOP, Reason.RUN_FINISHED, None
    if st.stopped is not None:
        return Outcome.STOP, st.stopped, "run already stopped"
    if gate and req.decide_by is not None and ctx.now > req.decide_by:
        # the client gave up waiting and failed closed: allowing now would lock the task
        # and count a handoff nobody makes
        return Outcome.STOP, Reason.REQUEST_EXPIRED, "read after its decide_by: the client gave up"
    if st.evicted_at is not None:
        return (
            Outcome.STOP,
            Reason.RUN_EXPIRED,
            "the run was idle past the worker's run retention and its task tree was evicted; "
            "start a new run",
        )
    # fields read once: attributes of pydantic models are several times slower than locals
    task_id, from_agent, to_agent = req.task_id, req.from_agent, req.to_agent
    if node is not None and node.owner != to_agent and node.owner:  # "": released
        return Outcome.STOP, Reason.OWNERSHIP_CONFLICT, f"{task_id} is owned by {node.owner}"
    if rules.roles:
        why = rules.limits.role_permits(from_agent, to_agent, req.task_kind or task_id)
        if why:
            return Outcome.STOP, Reason.ROLE_NOT_PERMITTED, why
    max_agents = rules.max_agents_per_run
    if max_agents is not None:
        agents = st.agents
        new = (from_agent not in agents) + (to_agent not in agents and to_agent != from_agent)
        if len(agents) + new > max_agents:
            return (
                Outcome.STOP,
                Reason.AGENT_LIMIT_EXCEEDED,
                (f"{len(agents) + new} agents > max_agents_per_run {max_agents}"),
            )
    max_handoffs = rules.max_handoffs
    if st.handoff_count + 1 > max_handoffs:
        return (
            Outcome.STOP,
            Reason.HANDOFF_BUDGET_EXCEEDED,
            (f"handoff {st.handoff_count + 1} > max_handoffs {max_handoffs}"),
        )
    max_depth = rules.max_delegation_depth
    if max_depth is not None and depth > max_depth:
        return (
            Outcome.STOP,
            Reason.DELEGATION_DEPTH_EXCEEDED,
            (f"depth {depth} > max_delegation_depth {max_depth}"),
        )
    if rules.detect_delegation_cycles and on_chain(st, req):
        return Outcome.STOP, Reason.DELEGATION_CYCLE, f"{to_agent} is already on the chain"
    if rules.max_bounces is not None:
        why = bounce_rule(st, req, rules.max_bounces)
        if why:
            return Outcome.STOP, Reason.DELEGATION_CYCLE, why
    exhausted = budget_exhausted(st, rules, ctx.now_ts)
    if exhausted:
        return Outcome.STOP, *exhausted
    if req.estimated_usd is not None or req.estimated_tool_calls is not None:
        why = estimate_over(st, req, rules)
        if why:
            return Outcome.STOP, Reason.SHARED_BUDGET_EXCEEDED, why
    if rules.tools_checked:
        why = tool_rule(req, rules)
        if why:
            return Outcome.STOP, Reason.TOOL_NOT_PERMITTED, why
    if gate and rules.needs_approval(req.action, req.tool, req.tools):
        return _APPROVAL_REQUIRED, Reason.APPROVAL_PENDING, None
    return _ALLOW, _OK, None


def _settle_reservation(st: RunState, done: HandoffCompleted) -> None:
    """A completion settles the reservation its request holds, only if it reports the task
    that reservation is for (or the reservation predates task ids): a report naming another
    task's request id must not free that estimate at no cost and let the run oversubscribe
    its shared budget. Its cost is counted either way."""
    held = st.reserved.get(done.request_id)
    if held is None:
        return
    if held.task_id is not None and held.task_id != done.task_id:
        return
    st.set_reserved(_without(st.reserved, done.request_id))


def _expire_reservations(st: RunState, ctx: _Ctx) -> list[Decision]:
    """reservation_ttl_seconds -> recorded reservation_expired: release every estimate whose
    TTL passed without a completion (a crashed sub-agent must not hold the run's budget)."""
    now_ts = ctx.now_ts
    expired = [
        (rid, r)
        for rid, r in st.reserved.items()
        if r.expires_at is not None and r.expires_at <= now_ts
    ]
    if not expired:
        return []
    gone = {rid for rid, _ in expired}
    st.set_reserved({rid: r for rid, r in st.reserved.items() if rid not in gone})
    out = []
    for rid, r in expired:
        node = st.task(r.task_id) if r.task_id is not None else None
        # phase control, not post_handoff: a client waiting for its report's record matches
        # request_id and phase, and must never take this record for it
        d = _decision(
            st,
            ctx,
            f"{rid}#reservation_expired",
            Phase.CONTROL,
            _RECORDED,
            Reason.RESERVATION_EXPIRED,
            None,
            owner=(node.owner or None) if node else None,
            from_agent=node.giver if node else None,
            to_agent=(node.owner or None) if node else None,
            task_id=r.task_id,
            parent_task_id=node.parent if node else None,
            depth=node.depth if node else 0,
            detail=(
                f"released {r.usd:g} USD and {r.tool_calls} tool calls reserved by request "
                f"{rid}: no completion within reservation_ttl_seconds"
            ),
        )
        d.request_id = rid
        out.append(d)
    return out


def _apply_allow(
    st: RunState, req: HandoffRequested, depth: int, node: TaskNode | None, ctx: _Ctx
) -> None:
    # tasks, agents, reserved, pending and bounces are replaced, never changed in place: the
    # state this one was copied from shares them (RunState.copy)
    task_id, from_agent, to_agent = req.task_id, req.from_agent, req.to_agent
    if node is None:
        st.add_task(task_id, TaskNode(to_agent, from_agent, req.parent_task_id, depth))
    elif not node.owner:  # released: the task keeps its place in the tree, gets an owner
        st.add_task(task_id, TaskNode(to_agent, from_agent, node.parent, node.depth))
    agents = st.agents
    if from_agent not in agents or to_agent not in agents:
        st.agents = {**agents, from_agent: None, to_agent: None}
    st.handoff_count += 1
    rules = ctx.rules
    if rules.max_bounces is not None:
        count_bounce(st, req)
    if req.estimated_usd or req.estimated_tool_calls:
        reservation = reservation_for(req, rules, ctx.now_ts)
        st.set_reserved({**st.reserved, req.request_id: reservation})  # type: ignore[dict-item]


def _apply_stop(st: RunState, reason: str, ctx: _Ctx) -> None:
    # budget stops on an *estimate* are not sticky: a smaller request may still fit
    rules = ctx.rules
    sticky = reason in STICKY_REASONS and not rules.shadow_mode
    if sticky and (reason != _SHARED or budget_exhausted(st, rules, ctx.now_ts)):
        st.stopped = reason


def _pre_handoff(st: RunState, event: HandoffRequested, ctx: _Ctx) -> list[Decision]:
    req = _fields(event)
    task_id = req.task_id
    node = st.new_tasks.get(task_id) or st.tasks.get(task_id)  # st.task(task_id), inline
    depth = depth_of(st, req, node)
    outcome, reason, detail = _check(st, req, ctx, depth, node, gate=True)
    approval_id = expires = None
    # shadow mode records and allows, except what it never shadows (a kill, the worker's own
    # stops: a tombstone must not take on a task, a run over its state budget not grow)
    shadow_mode = ctx.rules.shadow_mode and reason not in NEVER_SHADOWED
    if outcome is _APPROVAL_REQUIRED and not shadow_mode:
        if len(st.pending) >= MAX_PENDING_APPROVALS:
            outcome, reason = Outcome.STOP, Reason.APPROVAL_EXPIRED
            detail = f"more than {MAX_PENDING_APPROVALS} approvals pending in this run"
        else:
            approval_id = approval_id_for(event)
            expires = ctx.now + timedelta(seconds=ctx.rules.ttl_seconds)
            pending = PendingApproval(approval_id, event, expires.timestamp(), ctx.now_ts)
            st.pending = {**st.pending, approval_id: pending}
    if outcome is _ALLOW or shadow_mode:
        _apply_allow(st, req, depth, node, ctx)
        # kept, or the new (or released) task's
        owner = node.owner if node is not None and node.owner else req.to_agent
    else:
        if outcome is _STOP:
            _apply_stop(st, reason, ctx)
        owner = (node.owner or None) if node is not None else None
    d = _decision(
        st,
        ctx,
        req.request_id,
        _PRE_HANDOFF,
        outcome,
        reason,
        req.event_time,
        req,
        owner=owner,
        depth=depth,
        detail=detail,
        approval_id=approval_id,
        approval_expires_at=expires,
    )
    if approval_id is not None:
        d.request_digest = request_digest(event)  # what the approver signs
    return [d]


def _count_cost(st: RunState, done: HandoffCompleted) -> None:
    # saturating: a run's totals never pass what the audit's columns hold exactly (a run
    # there is over any sane budget long before)
    spent = st.spent_usd + done.cost_usd
    st.spent_usd = spent if spent < MAX_RUN_USD else MAX_RUN_USD
    calls = st.tool_calls + done.tool_calls
    st.tool_calls = calls if calls < MAX_RUN_COUNT else MAX_RUN_COUNT
    if done.steps:
        steps = st.steps + done.steps
        st.steps = steps if steps < MAX_RUN_COUNT else MAX_RUN_COUNT


def _post_handoff(st: RunState, event: HandoffCompleted, ctx: _Ctx) -> list[Decision]:
    done = _fields(event)
    rules = ctx.rules
    # every reported cost counts, even of a handoff Baton stopped or never saw: money spent
    # is spent, and the shared budget must see it
    _count_cost(st, done)
    _settle_reservation(st, done)
    node = st.task(done.task_id)
    refusal = spent_over(st, rules)
    if refusal is None and done.tools:
        why = used_tools_rule(done, node, rules)
        refusal = (Reason.TOOL_NOT_PERMITTED, why) if why else None
    released = release_ownership(st, done, node, rules) if done.status in rules.release_on else None
    if refusal is not None and st.stopped is None and not st.finished:
        outcome, (reason, over) = Outcome.STOP, refusal
        # a completion's stop ends the run: its cost is spent, its tool used
        if not rules.shadow_mode:
            st.stopped = reason
    elif refusal is not None:
        outcome, (reason, over) = Outcome.RECORDED, refusal
    elif released is not None:
        outcome, reason, over = _RECORDED, Reason.OWNERSHIP_RELEASED, released
    else:
        outcome, reason, over = _RECORDED, _WITHIN_BUDGET, None
    if released is not None and over is not released:
        over = f"{over}; {released}"
    return [
        _decision(
            st,
            ctx,
            done.request_id,
            _POST_HANDOFF,
            outcome,
            reason,
            done.event_time,
            owner=(node.owner or None) if node else done.agent,
            to_agent=done.agent,
            from_agent=node.giver if node else None,
            task_id=done.task_id,
            parent_task_id=node.parent if node else None,
            depth=node.depth if node else 0,
            handoff_status=done.status,
            detail=over,
        )
    ]


def _approval(st: RunState, ev: ApprovalGranted | ApprovalDenied, ctx: _Ctx) -> list[Decision]:
    pending = st.pending.get(ev.approval_id)
    if pending is None:
        return [_rejected_grant(st, ev, ctx, Reason.UNKNOWN_APPROVAL, "no such pending approval")]
    req = pending.request
    refused = _signature_refused(st, ev, pending, ctx)
    if refused is not None:
        return [_rejected_grant(st, ev, ctx, *refused)]
    if ev.approver == req.from_agent and not ctx.rules.allow_self_approval:
        return [
            _rejected_grant(
                st,
                ev,
                ctx,
                Reason.SELF_APPROVAL,
                f"{ev.approver} requested this handoff and may not approve it",
            )
        ]
    if ev.approver == req.to_agent:
        return [
            _rejected_grant(
                st,
                ev,
                ctx,
                Reason.BENEFICIARY_APPROVAL,
                f"{ev.approver} would receive this handoff and may not approve it",
            )
        ]
    if not ctx.rules.limits.approver_permitted(ev.approver):
        return [
            _rejected_grant(
                st,
                ev,
                ctx,
                Reason.APPROVER_NOT_PERMITTED,
                f"{ev.approver} is not in approval.approvers",
            )
        ]
    st.pending = _without(st.pending, ev.approval_id)
    node = st.task(req.task_id)
    depth = depth_of(st, req, node)
    if isinstance(ev, ApprovalDenied):
        outcome, reason, detail = Outcome.STOP, Reason.APPROVAL_DENIED, ev.comment
    else:
        outcome, reason, detail = _check(st, req, ctx, depth, node, gate=False)
        if outcome == Outcome.ALLOW:
            reason = Reason.APPROVAL_GRANTED
    if outcome == Outcome.ALLOW:
        _apply_allow(st, req, depth, node, ctx)
        node = st.task(req.task_id)
    elif outcome == Outcome.STOP:
        _apply_stop(st, reason, ctx)
    decided = [
        _decision(
            st,
            ctx,
            req.request_id,
            Phase.APPROVAL,
            outcome,
            reason,
            ev.event_time,
            req,
            owner=(node.owner or None) if node else None,
            depth=depth,
            approval_id=ev.approval_id,
            approver=ev.approver,
            approval_expires_at=_dt(pending.expires_at),
            detail=detail,
        )
    ]
    decided[0].request_digest = digest = request_digest(pending.request)
    _id_covers(decided[0], st.run_id, digest)
    return decided


#: how far a signer's clock may run ahead of the worker's
_CLOCK_SKEW_S = 60.0


def _signature_refused(
    st: RunState, ev: ApprovalGranted | ApprovalDenied, pending: PendingApproval, ctx: _Ctx
) -> tuple[Reason, str] | None:
    """Why a grant or denial does not count as signed (None: it does, or none is needed).

    With ``approval.keys`` in the policy, only a signature by the named approver's key over
    this approval, this run, this request's digest, this verdict and the event's time counts.
    """
    keys = ctx.rules.approval_keys
    if not keys:
        return None
    if not ev.signature:
        return Reason.APPROVAL_UNSIGNED, "approval.keys is set: only signed answers count"
    key = keys.get(ev.approver)
    if key is None:
        return Reason.UNKNOWN_APPROVER, f"{ev.approver} has no key in approval.keys"
    digest = request_digest(pending.request)
    claimed = ev.request_digest or digest
    verdict = "deny" if type(ev) is ApprovalDenied else "grant"
    payload = approval_payload(
        ev.approval_id, st.run_id, claimed, verdict, ev.approver, ev.event_time
    )
    if not verify(key, payload, ev.signature):
        return Reason.BAD_SIGNATURE, f"the signature is not {ev.approver}'s over this {verdict}"
    if claimed != digest:
        return (
            Reason.SIGNED_FOR_ANOTHER_REQUEST,
            "signed for another request (its digest differs from the pending request's)",
        )
    signed = ev.event_time.timestamp()
    if pending.created_at and signed < pending.created_at - _CLOCK_SKEW_S:
        return Reason.SIGNATURE_EXPIRED, "signed before this approval was asked for (a replay)"
    if signed > ctx.now_ts + _CLOCK_SKEW_S:
        return Reason.SIGNATURE_EXPIRED, "signed in the future (check the signer's clock)"
    if ctx.now_ts - signed > ctx.rules.max_signature_age:
        return (
            Reason.SIGNATURE_EXPIRED,
            f"signed {ctx.now_ts - signed:.0f}s ago > approval.max_signature_age_seconds "
            f"{ctx.rules.max_signature_age:g}",
        )
    return None


def _rejected_grant(
    st: RunState, ev: ApprovalGranted | ApprovalDenied, ctx: _Ctx, reason: str, detail: str
) -> Decision:
    # the approval stays pending; the attempt is recorded so the audit shows who tried.
    # It must not burn the approval's dedup key, so it is remembered under its own key.
    request_id = _refused_request_id(ev)
    return _decision(
        st,
        ctx,
        request_id,
        Phase.APPROVAL,
        Outcome.RECORDED,
        reason,
        ev.event_time,
        approval_id=ev.approval_id,
        approver=ev.approver,
        detail=detail,
    )


def _finish(st: RunState, ev: RunFinished, ctx: _Ctx) -> list[Decision]:
    st.finished = True
    return [
        _decision(
            st,
            ctx,
            f"{st.run_id}:finished",
            Phase.CONTROL,
            Outcome.RECORDED,
            Reason.RUN_FINISHED,
            ev.event_time,
        )
    ]


def _expire(st: RunState, ctx: _Ctx) -> list[Decision]:
    """Everything due in ``st``: expired approvals, then expired reservations."""
    out = _expire_approvals(st, ctx) if st.pending else []
    reserved_due = st.reserved_due
    if reserved_due is not None and reserved_due <= ctx.now_ts:
        out += _expire_reservations(st, ctx)
    return out


def _expire_approvals(st: RunState, ctx: _Ctx) -> list[Decision]:
    """approval.ttl_seconds -> stop approval_expired: every pending approval of ``st`` whose
    TTL passed without an answer."""
    now_ts = ctx.now_ts
    out: list[Decision] = []
    for approval_id, p in list(st.pending.items()):
        if p.expires_at > now_ts:
            continue
        st.pending = _without(st.pending, approval_id)
        req = p.request
        node = st.task(req.task_id)
        d = _decision(
            st,
            ctx,
            req.request_id,
            Phase.APPROVAL,
            Outcome.STOP,
            Reason.APPROVAL_EXPIRED,
            None,
            req,
            depth=depth_of(st, req, node),
            owner=(node.owner or None) if node else None,
            approval_id=approval_id,
            approval_expires_at=_dt(p.expires_at),
            detail=f"no decision within ttl {ctx.rules.ttl_seconds:g}s",
        )
        d.request_digest = digest = request_digest(req)
        _id_covers(d, st.run_id, digest)
        st.remember(APPROVAL + approval_id, [d])
        out.append(d)
    return out


def _without(d: dict[str, _V], key: str) -> dict[str, _V]:
    """``d`` without ``key``, as a new dict: the state's containers are never changed in place."""
    out = dict(d)
    del out[key]
    return out


class _FieldView:
    """Attribute access to a pydantic model's fields at plain-object speed (see _fields)."""


_new_view = object.__new__


def _fields(model: _M) -> _M:
    """A read-only view of ``model``'s fields that shares its ``__dict__``.

    Pydantic keeps a model's field values in its instance ``__dict__``, but reading them as
    attributes takes CPython's slow generic path (``BaseModel.__getattr__`` keeps 3.11 from
    specialising ``LOAD_ATTR``): about 25 ns a read, and a handoff reads ~25. The view is a
    plain object with the same dict, read at ~6 ns. Fields only: no properties or methods.
    """
    view = _new_view(_FieldView)
    view.__dict__ = model.__dict__
    return view  # type: ignore[return-value]


def _dt(ts: float) -> datetime:
    return _EPOCH + timedelta(seconds=ts)
