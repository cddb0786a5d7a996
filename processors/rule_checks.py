"""The policy's rules, one small function each, and the order a handoff meets them in.

Each rule names the policy key it enforces and the reason it stops with, and returns
``(reason, detail)`` when the handoff or report breaks it, else None. ``check_handoff``
runs the pre-handoff rules in the order docs/policy.md documents (first failure wins);
the engine (processors/engine.py) calls it and the completion rules. The delegation
chain's rules (depth, lineage, cycles, bounces) live in processors/rule_chain.py. Pure: they
read the run's state and the compiled limits (processors/policy_rules.py); the two that change a
state (``count_bounce``, ``release_ownership``) say so, and replace the containers they
change (RunState.copy shares them).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Final

from baton.processors.engine_control import NO_KILLS, KillSwitches
from baton.processors.engine_fields import Handoff, Report, handoff_of
from baton.processors.policy_rules import TenantRules
from baton.processors.rule_chain import (
    MAX_CHAIN_HOPS,
    Refusal,
    bounce_rule,
    count_bounce,
    cycle_rule,
    depth_of,
    depth_rule,
    lineage_rule,
    on_chain,
)
from baton.processors.state import RunState, TaskNode
from baton.schemas.decision import Outcome, Reason
from baton.schemas.events import HandoffRequested

if TYPE_CHECKING:
    from baton.processors.decision_builder import DecisionContext

__all__ = [
    "MAX_CHAIN_HOPS",
    "Refusal",
    "agent_limit_rule",
    "bounce_rule",
    "budget_exhausted",
    "check_handoff",
    "count_bounce",
    "cycle_rule",
    "depth_of",
    "depth_rule",
    "estimate_over",
    "handoff_limit_rule",
    "killed_rule",
    "lineage_rule",
    "on_chain",
    "ownership_rule",
    "release_ownership",
    "request_expired_rule",
    "role_rule",
    "run_closed_rule",
    "run_evicted_rule",
    "spent_over",
    "tool_rule",
    "ungranted_tool_rule",
    "unknown_tenant_rule",
    "used_tools_rule",
]

# (Final: a compiled module reads them from C statics, not through the module's dict)
_SHARED: Final = Reason.SHARED_BUDGET_EXCEEDED
_STOP: Final = Outcome.STOP
_ALLOW: Final = Outcome.ALLOW
_APPROVAL_REQUIRED: Final = Outcome.APPROVAL_REQUIRED
_OK: Final = Reason.OK
_APPROVAL_PENDING: Final = Reason.APPROVAL_PENDING
_NO_KILLS: Final = NO_KILLS
_TenantRules: Final = TenantRules


def check_handoff(
    st: RunState,
    request: Handoff | HandoffRequested,
    ctx: DecisionContext,
    depth: int,
    node: TaskNode | None,
    *,
    gate: bool,
) -> tuple[Outcome, str, str | None]:
    """Rules 1-8 of docs/policy.md for one handoff, in order, first failure wins: the
    outcome, reason and detail. ``node``: the task's, if it has one; ``depth``: the task's
    computed depth; ``gate`` False skips the approval gate (the handoff was just granted).
    ``request``: the handoff's fields (engine_fields), or the event (approvals.py)."""
    # (the check inline: a call costs more interpreted, where the worker runs)
    req = request if type(request) is Handoff else handoff_of(request)
    rules = ctx.rules
    # a rule that cannot apply is not called (a call costs more than most rules' checks):
    # no kill switch, a run neither closed nor evicted, no decide_by, a new task, no estimate
    refusal = (
        (killed_rule(st, ctx.kills) if ctx.kills is not _NO_KILLS else None)
        or (run_closed_rule(st) if st.finished or st.stopped is not None else None)
        or (unknown_tenant_rule(st) if rules.unknown_tenant else None)
        or (request_expired_rule(req, ctx.now) if gate and req.decide_by is not None else None)
        or (run_evicted_rule(st) if st.evicted_at is not None else None)
        or (ownership_rule(req, node) if node is not None else None)
        or (role_rule(req, rules) if rules.roles else None)
        or agent_limit_rule(st, req, rules)
        or handoff_limit_rule(st, rules)
        or (lineage_rule(st, req, node) if rules.require_lineage else None)
        or depth_rule(depth, rules)
        or (cycle_rule(st, req, node) if rules.detect_delegation_cycles else None)
        or (bounce_rule(st, req, rules.max_bounces) if rules.max_bounces is not None else None)
        or budget_exhausted(st, rules, ctx.now_ts)
        or (
            estimate_over(st, req, rules)
            if req.estimated_usd is not None or req.estimated_tool_calls is not None or st.reserved
            else None
        )
        or (tool_rule(req, rules) if rules.tools_checked else None)
    )
    if refusal:
        return _STOP, refusal[0], refusal[1]
    # (needs_approval is an interpreted method, ~3,000 instructions a call from a compiled
    # build: TenantRules itself without require_approval_for needs none; replay_share's
    # watched subclass always answers through it)
    if (
        gate
        and (type(rules) is not _TenantRules or rules.approval_re is not None)
        and rules.needs_approval(req.action, req.tool, req.tools)
    ):
        return _APPROVAL_REQUIRED, _APPROVAL_PENDING, None
    return _ALLOW, _OK, None


# ---------------------------------------------------------------- the run itself


def killed_rule(st: RunState, kills: KillSwitches) -> Refusal | None:
    """A kill switch (run, tenant or global, from gov.control) -> killed."""
    if kills is not _NO_KILLS and kills.killed(st.run_id, st.tenant):
        return Reason.KILLED, None
    return None


def run_closed_rule(st: RunState) -> Refusal | None:
    """A finished run -> run_finished; a stopped run stays stopped -> its original reason."""
    if st.finished:
        return Reason.RUN_FINISHED, None
    if st.stopped is not None:
        return st.stopped, "run already stopped"
    return None


def unknown_tenant_rule(st: RunState) -> Refusal | None:
    """strict_tenants -> unknown_tenant: the run's tenant is not under ``tenants`` (the
    policy in force: a run begun before strict_tenants was on, or before its tenant was
    taken off the list, gets no more allows; not sticky: listed again, it goes on)."""
    return (
        Reason.UNKNOWN_TENANT,
        f"tenant {st.tenant!r} is not under tenants (strict_tenants is on)",
    )


def request_expired_rule(req: Handoff, now: datetime) -> Refusal | None:
    """The request's ``decide_by`` passed -> request_expired: the client gave up waiting and
    failed closed, so allowing now would lock the task and count a handoff nobody makes."""
    if req.decide_by is not None and now > req.decide_by:
        return Reason.REQUEST_EXPIRED, "read after its decide_by: the client gave up"
    return None


def run_evicted_rule(st: RunState) -> Refusal | None:
    """Only the run's tombstone is left (the worker's run retention) -> run_expired."""
    if st.evicted_at is not None:
        return (
            Reason.RUN_EXPIRED,
            "the run was idle past the worker's run retention and its task tree was evicted; "
            "start a new run",
        )
    return None


# ---------------------------------------------------------------- who may take the task


def ownership_rule(req: Handoff, node: TaskNode | None) -> Refusal | None:
    """The ownership lock -> ownership_conflict: the task is owned by another agent than
    ``to_agent`` (a released task, owner "", may be taken)."""
    if node is not None and node.owner != req.to_agent and node.owner:
        return Reason.OWNERSHIP_CONFLICT, f"{req.task_id} is owned by {node.owner}"
    return None


def role_rule(req: Handoff, rules: TenantRules) -> Refusal | None:
    """roles.<agent>.may_own / may_delegate_to -> role_not_permitted."""
    why = rules.limits.role_permits(req.from_agent, req.to_agent, req.task_kind or req.task_id)
    return (Reason.ROLE_NOT_PERMITTED, why) if why else None


def agent_limit_rule(st: RunState, req: Handoff, rules: TenantRules) -> Refusal | None:
    """multi_agent.max_agents_per_run -> agent_limit_exceeded: the handoff would bring the
    run's distinct agents past the limit."""
    agents, from_agent, to_agent = st.agents, req.from_agent, req.to_agent
    new = (from_agent not in agents) + (to_agent not in agents and to_agent != from_agent)
    if len(agents) + new > rules.agents_cap:
        return (
            Reason.AGENT_LIMIT_EXCEEDED,
            f"{len(agents) + new} agents > max_agents_per_run {rules.max_agents_per_run}",
        )
    return None


def handoff_limit_rule(st: RunState, rules: TenantRules) -> Refusal | None:
    """multi_agent.max_handoffs (HARD_MAX_HANDOFFS without one) -> handoff_budget_exceeded."""
    if st.handoff_count + 1 > rules.max_handoffs:
        return (
            Reason.HANDOFF_BUDGET_EXCEEDED,
            f"handoff {st.handoff_count + 1} > max_handoffs {rules.max_handoffs}",
        )
    return None


# ---------------------------------------------------------------- budgets: one comparison


def budget_exhausted(st: RunState, rules: TenantRules, now_ts: float) -> Refusal | None:
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
    age = now_ts - st.started_at
    if age > rules.seconds_cap:
        return _SHARED, f"run age {age:.0f}s > max_run_seconds {rules.max_run_seconds:g}"
    return None


def estimate_over(st: RunState, req: Handoff, rules: TenantRules) -> Refusal | None:
    """shared_max_usd, shared_max_tool_calls with reservations -> shared_budget_exceeded:
    spent + reserved + this request's estimate (none: 0) would go over (parallel sub-agents
    cannot oversubscribe the run together; one that spent past its estimate while others
    still hold theirs leaves no room for a request that names no estimate either)."""
    estimated_usd, estimated_calls = req.estimated_usd, req.estimated_tool_calls
    if estimated_usd is not None or st.reserved_usd:
        total = st.spent_usd + st.reserved_usd + (estimated_usd or 0.0)
        if total > rules.usd.over:
            return (
                _SHARED,
                f"spent+reserved+estimate {total:.4f} > shared_max_usd {rules.shared_max_usd:g}",
            )
    if estimated_calls is not None or st.reserved_tool_calls:
        calls = st.tool_calls + st.reserved_tool_calls + (estimated_calls or 0)
        if calls > rules.calls.over:
            return (
                _SHARED,
                f"tool calls with reservations {calls} > shared_max_tool_calls "
                f"{rules.shared_max_tool_calls}",
            )
    return None


def spent_over(st: RunState, rules: TenantRules) -> Refusal | None:
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


# ---------------------------------------------------------------- tools


def tool_rule(req: Handoff, rules: TenantRules) -> Refusal | None:
    """tools.allow / tools.block, roles.<to_agent>.tools -> tool_not_permitted: a tool the
    handoff names (``tool``, ``tools``) that the receiving agent may not use."""
    tool, tools = req.tool, req.tools
    if tool is None and not tools:
        return None
    named = ([tool] if tool is not None else []) + (tools or [])
    why = rules.limits.tool_refusal(req.to_agent, named)
    return (Reason.TOOL_NOT_PERMITTED, why) if why else None


def used_tools_rule(done: Report, node: TaskNode | None, rules: TenantRules) -> Refusal | None:
    """tools.allow / tools.block, roles.<agent>.tools -> tool_not_permitted: a tool the
    completion reports that its agent, or the task's owner, may not use (already used: the
    run is stopped). The owner's role counts too: a report sent under another agent's name
    must not escape the owner's tool list."""
    if not done.tools or not rules.tools_checked:
        return None
    refusal = rules.limits.tool_refusal(done.agent, done.tools)
    if refusal is None and node is not None and node.owner and node.owner != done.agent:
        refusal = rules.limits.tool_refusal(node.owner, done.tools)
    return (Reason.TOOL_NOT_PERMITTED, refusal) if refusal else None


def ungranted_tool_rule(st: RunState, done: Report, rules: TenantRules) -> Refusal | None:
    """require_approval_for -> tool_not_permitted: a completion reports a tool the approval
    gate matches that no grant covers: its handoff (this request id, this task, this agent)
    was not granted, or was granted for other names (already used: the run is stopped)."""
    grant = st.grants.get(done.request_id)
    for tool in done.tools or ():
        if not rules.needs_approval(None, tool):
            continue
        if grant is None:
            why = f"request {done.request_id} was not granted an approval"
        elif (grant[0], grant[1]) != (done.task_id, done.agent):
            why = f"request {done.request_id} was granted for task {grant[0]} to {grant[1]}"
        elif tool not in grant[2]:
            why = f"the grant of request {done.request_id} is for other tools or used"
        else:
            continue
        return (
            Reason.TOOL_NOT_PERMITTED,
            f"tool {tool} used by {done.agent} on task {done.task_id} needs an approval "
            f"(require_approval_for): {why}",
        )
    return None


def release_ownership(
    st: RunState, done: Report, node: TaskNode | None, rules: TenantRules
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
