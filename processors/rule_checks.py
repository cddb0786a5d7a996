"""The policy's limits, one small function each: what a handoff or a report would break.

Each function names the policy key it enforces and the reason it stops with; the engine
(processors/engine.py, ``_check`` and ``_post_handoff``) calls them in the order
docs/policy.md documents. Pure: they read the run's state and the compiled limits
(processors/policy_rules.py); the two that change a state (``count_bounce``,
``release_ownership``) say so, and replace the containers they change (RunState.copy
shares them).
"""

from __future__ import annotations

from baton.processors.policy_rules import TenantRules
from baton.processors.state import Reservation, RunState, TaskNode
from baton.schemas.decision import Reason
from baton.schemas.events import HandoffCompleted, HandoffRequested

__all__ = [
    "bounce_rule",
    "budget_exhausted",
    "count_bounce",
    "depth_of",
    "estimate_over",
    "on_chain",
    "release_ownership",
    "reservation_for",
    "spent_over",
    "tool_rule",
    "used_tools_rule",
]

_SHARED = Reason.SHARED_BUDGET_EXCEEDED


# ---------------------------------------------------------------- the task tree
def depth_of(st: RunState, req: HandoffRequested, node: TaskNode | None) -> int:
    """The task's depth in the run's tree; ``node`` is the task's node if it has one."""
    if node is not None:
        return node.depth
    parent_id = req.parent_task_id
    if parent_id is None:
        return 1
    parent = st.task(parent_id)
    # a parent Baton never saw is taken as a root: depth is computed, never trusted
    return (parent.depth if parent is not None else 1) + 1


def on_chain(st: RunState, req: HandoffRequested) -> bool:
    """True when to_agent already sits on the task's delegation chain (A -> B -> A)."""
    if req.to_agent == req.from_agent:
        return True
    node = st.task(req.parent_task_id) if req.parent_task_id else None
    hops = 0
    while node is not None and hops < 64:
        if req.to_agent in (node.owner, node.giver):
            return True
        node = st.task(node.parent) if node.parent else None
        hops += 1
    return False


# ---------------------------------------------------------------- budgets: one comparison


def budget_exhausted(st: RunState, rules: TenantRules, now_ts: float) -> tuple[Reason, str] | None:
    """shared_max_usd, shared_max_tool_calls, max_run_seconds -> shared_budget_exceeded;
    max_steps -> step_budget_exceeded: the run has nothing left for another handoff."""
    if st.spent_usd >= rules.usd.reached:
        return _SHARED, f"spent {st.spent_usd:.4f} >= shared_max_usd {rules.shared_max_usd:g}"
    if st.tool_calls >= rules.calls.reached:
        return (
            _SHARED,
            f"tool calls {st.tool_calls} >= shared_max_tool_calls {rules.shared_max_tool_calls}",
        )
    if st.steps >= rules.steps.reached:
        return Reason.STEP_BUDGET_EXCEEDED, f"steps {st.steps} >= max_steps {rules.max_steps}"
    max_seconds = rules.max_run_seconds
    if max_seconds is not None:
        age = now_ts - st.started_at
        if age > max_seconds:
            return _SHARED, f"run age {age:.0f}s > max_run_seconds {max_seconds:g}"
    return None


def estimate_over(st: RunState, req: HandoffRequested, rules: TenantRules) -> str | None:
    """shared_max_usd, shared_max_tool_calls with reservations -> shared_budget_exceeded:
    spent + reserved + this request's estimate would go over (parallel sub-agents cannot
    oversubscribe the run together)."""
    estimated_usd, estimated_calls = req.estimated_usd, req.estimated_tool_calls
    if estimated_usd is not None:
        total = st.spent_usd + st.reserved_usd + estimated_usd
        if total > rules.usd.over:
            return f"spent+reserved+estimate {total:.4f} > shared_max_usd {rules.shared_max_usd:g}"
    if estimated_calls is not None:
        calls = st.tool_calls + st.reserved_tool_calls + estimated_calls
        if calls > rules.calls.over:
            return (
                f"tool calls with reservations {calls} > shared_max_tool_calls "
                f"{rules.shared_max_tool_calls}"
            )
    return None


def spent_over(st: RunState, rules: TenantRules) -> tuple[Reason, str] | None:
    """shared_max_usd, shared_max_tool_calls -> shared_budget_exceeded; max_steps ->
    step_budget_exceeded: a completion's cost took the run over a limit."""
    if st.spent_usd > rules.usd.over:
        return _SHARED, f"spent {st.spent_usd:.4f} > shared_max_usd {rules.shared_max_usd:g}"
    if st.tool_calls > rules.calls.over:
        return (
            _SHARED,
            f"tool calls {st.tool_calls} > shared_max_tool_calls {rules.shared_max_tool_calls}",
        )
    if st.steps > rules.steps.over:
        return Reason.STEP_BUDGET_EXCEEDED, f"steps {st.steps} > max_steps {rules.max_steps}"
    return None


# ---------------------------------------------------------------- the rules added in issue 14


def bounce_rule(st: RunState, req: HandoffRequested, max_bounces: int) -> str | None:
    """max_bounces -> delegation_cycle: from_agent hands work back to the agent that last
    handed work to it, once too often (task ids and parent links play no part)."""
    giver, taker = req.from_agent, req.to_agent
    if giver == taker:
        return None
    last = st.bounces.get((giver, taker) if giver < taker else (taker, giver))
    if last is None or last[0] == giver:
        return None  # the pair's first handoff, or the same direction as the last
    bounces = last[1] + 1
    if bounces > max_bounces:
        return (
            f"{taker} and {giver} handed work back and forth {bounces} times > max_bounces "
            f"{max_bounces}"
        )
    return None


def count_bounce(st: RunState, req: HandoffRequested) -> None:
    """Record an allowed handoff for max_bounces: a change of direction is one bounce."""
    giver, taker = req.from_agent, req.to_agent
    if giver == taker:
        return
    pair = (giver, taker) if giver < taker else (taker, giver)
    last = st.bounces.get(pair)
    bounces = 0 if last is None else last[1] + (last[0] != giver)
    st.bounces = {**st.bounces, pair: (giver, bounces)}


def tool_rule(req: HandoffRequested, rules: TenantRules) -> str | None:
    """tools.allow / tools.block, roles.<to_agent>.tools -> tool_not_permitted: a tool the
    handoff names (``tool``, ``tools``) that the receiving agent may not use."""
    tool, tools = req.tool, req.tools
    if tool is None and not tools:
        return None
    named = ([tool] if tool is not None else []) + (tools or [])
    return rules.limits.tool_refusal(req.to_agent, named)


def used_tools_rule(
    done: HandoffCompleted, node: TaskNode | None, rules: TenantRules
) -> str | None:
    """tools.allow / tools.block, roles.<agent>.tools -> tool_not_permitted: a tool the
    completion reports that its agent, or the task's owner, may not use (already used: the
    run is stopped). The owner's role counts too: a report sent under another agent's name
    must not escape the owner's tool list."""
    if not done.tools or not rules.tools_checked:
        return None
    refusal = rules.limits.tool_refusal(done.agent, done.tools)
    if refusal is None and node is not None and node.owner and node.owner != done.agent:
        refusal = rules.limits.tool_refusal(node.owner, done.tools)
    return refusal


def release_ownership(
    st: RunState, done: HandoffCompleted, node: TaskNode | None, rules: TenantRules
) -> str | None:
    """release_ownership_on -> ownership_released: a completion by the task's owner with a
    failure status frees the task (in ``st``) for another agent, and says so. Only the
    owner's own report frees it (another agent's report of a failure must not let it take
    the task over); the task keeps its parent and depth."""
    if done.status not in rules.release_on or node is None or not node.owner:
        return None
    if node.owner != done.agent:
        return None
    st.add_task(done.task_id, node._replace(owner=""))
    return (
        f"task {done.task_id} released by {done.agent} (status {done.status} is in "
        "release_ownership_on): another agent may own it"
    )


def reservation_for(req: HandoffRequested, rules: TenantRules, now_ts: float) -> Reservation | None:
    """What an allowed handoff reserves: its estimates, until reservation_ttl_seconds."""
    estimated_usd, estimated_calls = req.estimated_usd, req.estimated_tool_calls
    if not (estimated_usd or estimated_calls):
        return None
    ttl = rules.reservation_ttl
    return Reservation(
        estimated_usd or 0.0,
        estimated_calls or 0,
        now_ts + ttl if ttl is not None else None,
        req.task_id,
    )
