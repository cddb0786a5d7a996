"""The policy's rules, one small function each, and the order a handoff meets them in.

Each rule names the policy key it enforces and the reason it stops with, and returns
``(reason, detail)`` when the handoff or report breaks it, else None. ``check_handoff``
runs the pre-handoff rules in the order docs/policy.md documents (first failure wins);
the engine (processors/engine.py) calls it and the completion rules. Pure: they read the
run's state and the compiled limits (processors/policy_rules.py); the two that change a
state (``count_bounce``, ``release_ownership``) say so, and replace the containers they
change (RunState.copy shares them).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from baton.processors.engine_control import NO_KILLS, KillSwitches
from baton.processors.policy_rules import TenantRules
from baton.processors.state import RunState, TaskNode
from baton.schemas.decision import Outcome, Reason
from baton.schemas.events import HandoffCompleted, HandoffRequested

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

#: what a broken rule returns: the reason it stops with and a detail naming the limit
Refusal = tuple[str, str | None]
#: parent links detect_delegation_cycles walks up a task's chain; a longer chain (or parent
#: links that loop) is taken as a cycle (a depth limit keeps honest chains far shorter)
MAX_CHAIN_HOPS = 256

_SHARED = Reason.SHARED_BUDGET_EXCEEDED
_STOP, _ALLOW, _APPROVAL_REQUIRED = Outcome.STOP, Outcome.ALLOW, Outcome.APPROVAL_REQUIRED
_OK, _APPROVAL_PENDING = Reason.OK, Reason.APPROVAL_PENDING


def check_handoff(
    st: RunState,
    req: HandoffRequested,
    ctx: DecisionContext,
    depth: int,
    node: TaskNode | None,
    *,
    gate: bool,
) -> tuple[Outcome, str, str | None]:
    """Rules 1-8 of docs/policy.md for one handoff, in order, first failure wins: the
    outcome, reason and detail. ``node``: the task's, if it has one; ``depth``: the task's
    computed depth; ``gate`` False skips the approval gate (the handoff was just granted)."""
    rules = ctx.rules
    # a rule that cannot apply is not called (a call costs more than most rules' checks):
    # no kill switch, a run neither closed nor evicted, no decide_by, a new task, no estimate
    refusal = (
        (killed_rule(st, ctx.kills) if ctx.kills is not NO_KILLS else None)
        or (run_closed_rule(st) if st.finished or st.stopped is not None else None)
        or (unknown_tenant_rule(st) if rules.unknown_tenant else None)
        or (request_expired_rule(req, ctx.now) if gate and req.decide_by is not None else None)
        or (run_evicted_rule(st) if st.evicted_at is not None else None)
        or (ownership_rule(req, node) if node is not None else None)
        or (role_rule(req, rules) if rules.roles else None)
        or agent_limit_rule(st, req, rules)
        or handoff_limit_rule(st, rules)
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
    if gate and rules.needs_approval(req.action, req.tool, req.tools):
        return _APPROVAL_REQUIRED, _APPROVAL_PENDING, None
    return _ALLOW, _OK, None


# ---------------------------------------------------------------- the run itself


def killed_rule(st: RunState, kills: KillSwitches) -> Refusal | None:
    """A kill switch (run, tenant or global, from gov.control) -> killed."""
    if kills is not NO_KILLS and kills.killed(st.run_id, st.tenant):
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


def request_expired_rule(req: HandoffRequested, now: datetime) -> Refusal | None:
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


def ownership_rule(req: HandoffRequested, node: TaskNode | None) -> Refusal | None:
    """The ownership lock -> ownership_conflict: the task is owned by another agent than
    ``to_agent`` (a released task, owner "", may be taken)."""
    if node is not None and node.owner != req.to_agent and node.owner:
        return Reason.OWNERSHIP_CONFLICT, f"{req.task_id} is owned by {node.owner}"
    return None


def role_rule(req: HandoffRequested, rules: TenantRules) -> Refusal | None:
    """roles.<agent>.may_own / may_delegate_to -> role_not_permitted."""
    why = rules.limits.role_permits(req.from_agent, req.to_agent, req.task_kind or req.task_id)
    return (Reason.ROLE_NOT_PERMITTED, why) if why else None


def agent_limit_rule(st: RunState, req: HandoffRequested, rules: TenantRules) -> Refusal | None:
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


def on_chain(st: RunState, req: HandoffRequested, node: TaskNode | None = None) -> bool:
    """True when to_agent already sits on the task's delegation chain (A -> B -> A): the
    chain above the request's parent and, for a task the run knows (``node``), above the
    parent its tree holds (a released task handed on naming no parent, or another one, has
    its place in the tree still). A chain longer than MAX_CHAIN_HOPS links (or parent links
    that loop) is taken as a cycle: never walked past the bound and then let through."""
    to_agent = req.to_agent
    if to_agent == req.from_agent:
        return True
    starts = [req.parent_task_id]
    if node is not None and node.parent != req.parent_task_id:
        starts.append(node.parent)
    for parent_id in starts:
        above = st.task(parent_id) if parent_id else None
        hops = 0
        while above is not None:
            if hops == MAX_CHAIN_HOPS or to_agent == above.owner or to_agent == above.giver:
                return True
            above = st.task(above.parent) if above.parent else None
            hops += 1
    return False


def depth_rule(depth: int, rules: TenantRules) -> Refusal | None:
    """multi_agent.max_delegation_depth -> delegation_depth_exceeded (``depth`` computed by
    depth_of, never the client's)."""
    if depth > rules.depth_cap:
        return (
            Reason.DELEGATION_DEPTH_EXCEEDED,
            f"depth {depth} > max_delegation_depth {rules.max_delegation_depth}",
        )
    return None


def cycle_rule(st: RunState, req: HandoffRequested, node: TaskNode | None = None) -> Refusal | None:
    """multi_agent.detect_delegation_cycles -> delegation_cycle: the task would go back to an
    agent already on its delegation chain (``node``: the task's, if the run knows it)."""
    if on_chain(st, req, node):
        return (
            Reason.DELEGATION_CYCLE,
            f"{req.to_agent} is already on the chain (or it is over {MAX_CHAIN_HOPS} tasks long)",
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


def estimate_over(st: RunState, req: HandoffRequested, rules: TenantRules) -> Refusal | None:
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


# ---------------------------------------------------------------- cycles without task links, tools


def bounce_rule(st: RunState, req: HandoffRequested, max_bounces: int) -> Refusal | None:
    """max_bounces -> delegation_cycle: work goes back to where it came from once too often,
    task ids and parent links playing no part: from_agent hands work back to the agent that
    last handed work to it (A -> B -> A), or to the start of a three-agent loop
    (A -> B -> C -> A). Each such handoff is a bounce of its pair of agents."""
    giver, taker = req.from_agent, req.to_agent
    if giver == taker:
        return None
    last = st.bounces.get((giver, taker) if giver < taker else (taker, giver))
    back = last is not None and last[0] != giver
    via = None if back else _loop_via(st, giver, taker)
    if not back and via is None:
        return None  # the pair's first handoff, or the same direction as the last
    bounces = (last[1] if last is not None else 0) + 1
    if bounces <= max_bounces:
        return None
    if via is None:
        why = f"{taker} and {giver} handed work back and forth {bounces} times"
    else:
        why = f"{giver} closes the loop {taker} -> {via} -> {giver} -> {taker} ({bounces} times)"
    return Reason.DELEGATION_CYCLE, f"{why} > max_bounces {max_bounces}"


def count_bounce(st: RunState, req: HandoffRequested) -> None:
    """Record an allowed handoff for max_bounces (changes ``st``): handing work back, or
    closing a three-agent loop, is one bounce of the pair."""
    giver, taker = req.from_agent, req.to_agent
    if giver == taker:
        return
    pair = (giver, taker) if giver < taker else (taker, giver)
    last = st.bounces.get(pair)
    back = last is not None and last[0] != giver
    bounced = back or _loop_via(st, giver, taker) is not None
    st.bounces = {**st.bounces, pair: (giver, (last[1] if last is not None else 0) + bounced)}


def _loop_via(st: RunState, giver: str, taker: str) -> str | None:
    """The agent X that ``taker`` last handed work to and that last handed work to
    ``giver``: giver -> taker then closes the loop taker -> X -> giver -> taker (None: no
    such agent). One pass over the run's agents, two lookups each."""
    bounces = st.bounces
    for x in st.agents:  # giver and taker themselves never match: no pair of one agent
        out = bounces.get((taker, x) if taker < x else (x, taker))
        if out is None or out[0] != taker:
            continue
        into = bounces.get((x, giver) if x < giver else (giver, x))
        if into is not None and into[0] == x:
            return x
    return None


def tool_rule(req: HandoffRequested, rules: TenantRules) -> Refusal | None:
    """tools.allow / tools.block, roles.<to_agent>.tools -> tool_not_permitted: a tool the
    handoff names (``tool``, ``tools``) that the receiving agent may not use."""
    tool, tools = req.tool, req.tools
    if tool is None and not tools:
        return None
    named = ([tool] if tool is not None else []) + (tools or [])
    why = rules.limits.tool_refusal(req.to_agent, named)
    return (Reason.TOOL_NOT_PERMITTED, why) if why else None


def used_tools_rule(
    done: HandoffCompleted, node: TaskNode | None, rules: TenantRules
) -> Refusal | None:
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


def ungranted_tool_rule(st: RunState, done: HandoffCompleted, rules: TenantRules) -> Refusal | None:
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
