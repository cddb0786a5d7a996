"""The approval flow of a gated handoff: asked (approval id, pending), answered (who may
grant or deny, and with which signature) and expired (approval.ttl_seconds).

The engine (processors/engine.py) decides when a handoff needs an approval; this module
says whether an answer counts, decides the handoff again on a grant, remembers what the
grant covers until the handoff's report, and builds the records; and whether an
``approval_required`` record holds together before an approver signs it. An
answer that does not count leaves the approval pending and is recorded under its own key
and request id, so the real approver's answer still counts and no refusal replaces another
record in the audit.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from baton.processors.decision_builder import (
    DecisionContext,
    approval_mark,
    build_decision,
    cover_digest,
)
from baton.processors.dedup_keys import APPROVAL, REFUSED, request_digest
from baton.processors.engine_fields import Report
from baton.processors.engine_outcome import apply_allow, apply_stop
from baton.processors.policy_rules import TenantRules
from baton.processors.rule_checks import check_handoff, depth_of
from baton.processors.state import MAX_PENDING_APPROVALS, PendingApproval, RunState, TaskNode
from baton.schemas.decision import Decision, Outcome, Phase, Reason
from baton.schemas.events import (
    ApprovalDenied,
    ApprovalGranted,
    EventError,
    HandoffCompleted,
    HandoffRequested,
    parse_event,
)
from baton.schemas.signing import approval_payload, verify

__all__ = [
    "MAX_GRANTS",
    "answer_approval",
    "answer_refused",
    "answered",
    "approval_id_for",
    "ask_approval",
    "expire_pending",
    "refused_answer_id",
    "refused_key",
    "remember_grant",
    "request_problem",
    "spend_grant",
]

#: granted handoffs a run remembers, reported or not (the oldest is forgotten first: its
#: report of a gated tool is then stopped, never let through)
MAX_GRANTS = MAX_PENDING_APPROVALS
#: how far a signer's clock may run ahead of the worker's
_CLOCK_SKEW_S = 60.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: an empty 8-byte BLAKE2b, copied per digest (cheaper than a new one)
_DIGEST = hashlib.blake2b(digest_size=8)


def approval_id_for(request: HandoffRequested, life: str = "") -> str:
    """The approval id of a handoff that needs one: derived from the run, the request id,
    the request's digest and ``life`` (decision_builder.approval_mark: the run's life, and
    a forgetful run's input position), so it names this request of this life only (an
    approver signs it; the same request id reused for another request, or the request
    copied into a later life of the run id or past a long run's window, asks for another
    approval). A run begun before lives were marked (``life`` "") keeps the ids it had."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"{len(request.run_id)}:{request.run_id}\x1f{request.request_id}\x1f".encode())
    h.update(request_digest(request).encode())
    if life:  # after the fixed-length hex digest: no unmarked id's text can end like this
        h.update(f"\x1f@life:{life}".encode())
    return "apr_" + h.hexdigest()


def ask_approval(
    st: RunState, event: HandoffRequested, ctx: DecisionContext
) -> tuple[str, datetime] | None:
    """Open an approval for ``event`` in ``st`` (pending until approval.ttl_seconds): its id
    and expiry, or None when MAX_PENDING_APPROVALS are pending already."""
    if len(st.pending) >= MAX_PENDING_APPROVALS:
        return None
    approval_id = approval_id_for(event, approval_mark(st, ctx.origin))
    expires = ctx.now + timedelta(seconds=ctx.rules.ttl_seconds)
    pending = PendingApproval(approval_id, event, expires.timestamp(), ctx.now_ts)
    st.pending = {**st.pending, approval_id: pending}
    return approval_id, expires


def answer_refused(
    st: RunState,
    ev: ApprovalGranted | ApprovalDenied,
    pending: PendingApproval | None,
    ctx: DecisionContext,
) -> Decision | None:
    """The record refusing an answer that does not count (None: it counts): no such pending
    approval, a signature that does not hold, the requester or the beneficiary answering,
    an approver not in approval.approvers. The approval stays pending."""
    if pending is None:
        return _rejected(st, ev, ctx, Reason.UNKNOWN_APPROVAL, "no such pending approval")
    req = pending.request
    refused = _signature_refused(st, ev, pending, ctx)
    if refused is not None:
        return _rejected(st, ev, ctx, *refused)
    if ev.approver == req.from_agent and not ctx.rules.allow_self_approval:
        why = f"{ev.approver} requested this handoff and may not approve it"
        return _rejected(st, ev, ctx, Reason.SELF_APPROVAL, why)
    if ev.approver == req.to_agent:
        why = f"{ev.approver} would receive this handoff and may not approve it"
        return _rejected(st, ev, ctx, Reason.BENEFICIARY_APPROVAL, why)
    if not ctx.rules.limits.approver_permitted(ev.approver):
        why = f"{ev.approver} is not in approval.approvers"
        return _rejected(st, ev, ctx, Reason.APPROVER_NOT_PERMITTED, why)
    return None


def answer_approval(
    st: RunState, ev: ApprovalGranted | ApprovalDenied, ctx: DecisionContext
) -> list[Decision]:
    """An answer to a pending approval: refused (the approval stays pending), a denial
    (stop), or a grant (the request's rules again, without the gate; an allow remembers
    what the grant covers until the handoff's report)."""
    pending = st.pending.get(ev.approval_id)
    refused = answer_refused(st, ev, pending, ctx)
    if refused is not None:
        return [refused]
    assert pending is not None  # answer_refused refuses an answer to no pending approval
    st.pending = {k: p for k, p in st.pending.items() if k != ev.approval_id}
    req = pending.request
    node = st.task(req.task_id)
    depth = depth_of(st, req, node)
    if type(ev) is ApprovalDenied:
        outcome, reason, detail = Outcome.STOP, Reason.APPROVAL_DENIED, ev.comment
    else:
        outcome, reason, detail = check_handoff(st, req, ctx, depth, node, gate=False)
        if outcome is Outcome.ALLOW:
            reason = Reason.APPROVAL_GRANTED
    if outcome is Outcome.ALLOW:
        apply_allow(st, req, depth, node, ctx)
        remember_grant(st, req, ctx.rules)
        node = st.task(req.task_id)
    elif outcome is Outcome.STOP:
        apply_stop(st, reason, ctx)
    return [answered(st, ev, pending, ctx, (outcome, reason, detail), depth, node)]


def answered(
    st: RunState,
    ev: ApprovalGranted | ApprovalDenied,
    pending: PendingApproval,
    ctx: DecisionContext,
    decided: tuple[Outcome, str, str | None],
    depth: int,
    node: TaskNode | None,
) -> Decision:
    """The approval-phase record of an answer that counted: ``decided`` is the outcome,
    reason and detail the engine reached for the pending request."""
    outcome, reason, detail = decided
    req = pending.request
    d = build_decision(
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
    d.request_digest = digest = request_digest(req)
    cover_digest(d, st, ctx, digest)
    return d


def remember_grant(st: RunState, req: HandoffRequested, rules: TenantRules) -> None:
    """Remember what the grant of an allowed handoff covers, until its completion: the task,
    the agent it went to, and the names it declared (``action``, ``tool``, ``tools``) that
    require_approval_for matches. A grant covers those names only (one for tool X does not
    cover tool Y), for this request id only."""
    declared = (req.action, req.tool, *(req.tools or ()))
    names = tuple(n for n in declared if n and rules.needs_approval(None, n))
    grants = st.grants
    if len(grants) >= MAX_GRANTS:
        grants = dict(list(grants.items())[len(grants) - MAX_GRANTS + 1 :])
    st.grants = {**grants, req.request_id: (req.task_id, req.to_agent, names)}


def spend_grant(st: RunState, done: HandoffCompleted | Report) -> None:
    """The completion of a granted handoff (its request id, task and agent) was counted: its
    grant covers nothing more. It is kept, covering no name, so that its request id stays
    taken: the same request and the same signed grant sent again past the dedup window are
    refused, never granted a second use. A report naming another task or agent spends
    nothing."""
    grant = st.grants.get(done.request_id)
    if grant is not None and grant[2] and (grant[0], grant[1]) == (done.task_id, done.agent):
        st.grants = {**st.grants, done.request_id: (grant[0], grant[1], ())}


def expire_pending(st: RunState, ctx: DecisionContext) -> list[Decision]:
    """approval.ttl_seconds -> stop approval_expired: every pending approval of ``st`` whose
    TTL passed without an answer (each remembered under its approval's key, so a late
    answer gets this stop)."""
    now_ts = ctx.now_ts
    out: list[Decision] = []
    for approval_id, p in list(st.pending.items()):
        if p.expires_at > now_ts:
            continue
        st.pending = {k: v for k, v in st.pending.items() if k != approval_id}
        req = p.request
        node = st.task(req.task_id)
        d = build_decision(
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
        cover_digest(d, st, ctx, digest)
        st.remember(APPROVAL + approval_id, [d])
        out.append(d)
    return out


def refused_answer_id(ev: ApprovalGranted | ApprovalDenied) -> str:
    """The ``request_id`` of the record that refuses the answer ``ev`` (clients wait on it).

    It holds the whole event's digest: a redelivery repeats it; anything else (a new attempt
    after the approvers list changed, or the real approver's signed grant after a forgery
    that named the same approver and time) is another event, decided afresh, with its own
    decision id (so no refusal replaces another's record in the audit).
    """
    h = _DIGEST.copy()
    h.update(ev.to_json())
    return f"{ev.type}:{ev.approval_id}:{ev.approver}#{h.hexdigest()}"


def refused_key(ev: ApprovalGranted | ApprovalDenied) -> str:
    """The dedup key of an answer that did not count: its own, so that it does not burn the
    approval's key (the real approver's answer must still count)."""
    return f"{REFUSED}{refused_answer_id(ev)}@{ev.event_time.isoformat()}"


def _signature_refused(
    st: RunState,
    ev: ApprovalGranted | ApprovalDenied,
    pending: PendingApproval,
    ctx: DecisionContext,
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


#: what `baton approvals` shows of a request, each as the request itself names it
_SHOWN = ("run_id", "request_id", "from_agent", "to_agent", "task_id", "action", "tool")


def request_problem(asked: Decision) -> str | None:
    """Why the ``approval_required`` row ``asked`` may not be what it shows (None: it holds
    together): its recorded request (``input``) must hash to the ``request_digest`` an answer
    signs, and name what `baton approvals` showed. A row written into the audit by anyone who
    can write gov.decisions could show one request and carry another's digest: the approver
    would sign the one not shown, which the worker takes as the answer to it."""
    try:
        request = parse_event((asked.input or "").encode())
    except EventError as exc:
        return f"its recorded request does not read: {str(exc)[:120]}"
    if not isinstance(request, HandoffRequested):
        return f"its recorded input is a {request.type}, not a handoff request"
    if request_digest(request) != asked.request_digest:
        return "its request_digest is not its recorded request's"
    for name in _SHOWN:
        if getattr(request, name) != getattr(asked, name):
            return f"it shows {name} {str(getattr(asked, name))[:60]!a}, its request another"
    return None


def _rejected(
    st: RunState,
    ev: ApprovalGranted | ApprovalDenied,
    ctx: DecisionContext,
    reason: str,
    detail: str,
) -> Decision:
    """The record of an answer that did not count: the audit shows who tried."""
    return build_decision(
        st,
        ctx,
        refused_answer_id(ev),
        Phase.APPROVAL,
        Outcome.RECORDED,
        reason,
        ev.event_time,
        approval_id=ev.approval_id,
        approver=ev.approver,
        detail=detail,
    )


def _dt(ts: float) -> datetime:
    return _EPOCH + timedelta(seconds=ts)
