"""The run's shared budget as events change it: costs counted, estimates reserved, settled
by their completion, or released at reservation_ttl_seconds.

The rules that *compare* the budget with its limits are in processors/rule_checks.py
(``budget_exhausted``, ``estimate_over``, ``spent_over``); this module only changes a run's
totals, replacing the containers it changes (RunState.copy shares them).
"""

from __future__ import annotations

from typing import Final

from baton.processors.decision_builder import DecisionContext, build_decision
from baton.processors.engine_fields import Handoff, Report
from baton.processors.policy_rules import TenantRules
from baton.processors.state import Reservation, RunState
from baton.schemas.decision import Decision, Outcome, Phase, Reason
from baton.schemas.events import MAX_RUN_COUNT, MAX_RUN_USD

# (Final: a compiled module reads them from C statics, not through the module's dict)
_MAX_RUN_USD: Final = MAX_RUN_USD
_MAX_RUN_COUNT: Final = MAX_RUN_COUNT
#: a Reservation made as its class's own __new__ makes it, without calling that (a Python
#: function: ~1.5k instructions, compiled)
_new_reservation: Final = tuple.__new__
_Reservation: Final = Reservation

__all__ = ["count_cost", "expire_reservations", "reserve", "settle_reservation"]


def count_cost(st: RunState, done: Report) -> None:
    """Add a completion's cost, tool calls and steps to the run's totals: every reported
    cost counts, even of a handoff Baton stopped or never saw (money spent is spent)."""
    # saturating: a run's totals never pass what the audit's columns hold exactly (a run
    # there is over any sane budget long before)
    spent = st.spent_usd + done.cost_usd
    st.spent_usd = spent if spent < _MAX_RUN_USD else _MAX_RUN_USD
    calls = st.tool_calls + done.tool_calls
    st.tool_calls = calls if calls < _MAX_RUN_COUNT else _MAX_RUN_COUNT
    if done.steps:
        steps = st.steps + done.steps
        st.steps = steps if steps < _MAX_RUN_COUNT else _MAX_RUN_COUNT


def reserve(st: RunState, req: Handoff, rules: TenantRules, now_ts: float) -> None:
    """An allowed handoff's estimates (``estimated_usd``, ``estimated_tool_calls``) held
    against the shared budget until its completion, or reservation_ttl_seconds."""
    estimated_usd, estimated_calls = req.estimated_usd, req.estimated_tool_calls
    if not (estimated_usd or estimated_calls):
        return
    ttl = rules.reservation_ttl
    reservation: Reservation = _new_reservation(
        _Reservation,
        (
            estimated_usd or 0.0,
            estimated_calls or 0,
            now_ts + ttl if ttl is not None else None,
            req.task_id,
        ),
    )
    st.set_reserved({**st.reserved, req.request_id: reservation})


def settle_reservation(st: RunState, done: Report) -> None:
    """A completion settles the reservation its request holds, only if it reports the task
    that reservation is for (or the reservation predates task ids): a report naming another
    task's request id must not free that estimate at no cost and let the run oversubscribe
    its shared budget. Its cost is counted either way."""
    held = st.reserved.get(done.request_id)
    if held is None:
        return
    if held.task_id is not None and held.task_id != done.task_id:
        return
    st.set_reserved({k: r for k, r in st.reserved.items() if k != done.request_id})


def expire_reservations(st: RunState, ctx: DecisionContext) -> list[Decision]:
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
        d = build_decision(
            st,
            ctx,
            f"{rid}#reservation_expired",
            Phase.CONTROL,
            Outcome.RECORDED,
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
