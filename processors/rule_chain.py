"""The rules of a run's delegation chain: depth, lineage, cycles over the task tree, and
bounces whatever the task ids.

Each returns ``(reason, detail)`` when a handoff breaks it, else None, and names the policy
key it enforces; ``rule_checks.check_handoff`` runs them in docs/policy.md's order. Pure but
``count_bounce``, which says so and replaces the container it changes.
"""

from __future__ import annotations

from typing import Final

from baton.processors.engine_fields import Handoff, handoff_of
from baton.processors.policy_rules import TenantRules
from baton.processors.state import RunState, TaskNode
from baton.schemas.decision import Reason
from baton.schemas.events import HandoffRequested

__all__ = [
    "MAX_CHAIN_HOPS",
    "Refusal",
    "bounce_rule",
    "count_bounce",
    "cycle_rule",
    "depth_of",
    "depth_rule",
    "lineage_rule",
    "on_chain",
]

#: what a broken rule returns: the reason it stops with and a detail naming the limit
Refusal = tuple[str, str | None]
#: parent links detect_delegation_cycles walks up a task's chain; a longer chain (or parent
#: links that loop) is taken as a cycle (a depth limit keeps honest chains far shorter)
MAX_CHAIN_HOPS: Final = 256


def lineage_rule(st: RunState, req: Handoff, node: TaskNode | None = None) -> Refusal | None:
    """multi_agent.require_lineage -> lineage_required: a handoff from an agent other than
    the run's first (the ``from_agent`` of its first allowed handoff: the first of its
    agents) names no ``parent_task_id`` that ``from_agent`` owns in the run's tree. Without
    it, an agent deep in a chain starts a fresh one (no parent, or a task id the run never
    saw: depth 1, an empty chain above it) and the depth and cycle rules never see where it
    stands. The run's first handoff sets its first agent, also while it awaits its approval
    (else another agent's handoff in that window made itself the first). A released task
    (``node``, owner "") keeps its place in the tree, so its new owner is given it from
    there: the handoff names the task's own parent (else an agent at the depth limit handed
    a shallow released task on, naming its own task, and the new owner started a fresh
    chain from depth 1)."""
    agents, pending = st.agents, st.pending
    if agents:
        first = next(iter(agents))  # an ordered set
    elif pending:  # the run's first handoff awaits its approval: its giver is the first agent
        first = next(iter(pending.values())).request.from_agent
    else:  # the run's first handoff: its giver is the run's first agent
        return None
    from_agent = req.from_agent
    if from_agent == first:
        return None
    parent_id = req.parent_task_id
    if node is not None and not node.owner and parent_id != node.parent:
        return (
            Reason.LINEAGE_REQUIRED,
            f"task {req.task_id} was released under {node.parent or 'no parent'}: its "
            f"handoff names that parent_task_id, not {parent_id}",
        )
    if parent_id is None:
        return (
            Reason.LINEAGE_REQUIRED,
            f"{from_agent} is not the run's first agent ({first}) and names no parent_task_id",
        )
    parent = st.task(parent_id)
    if parent is None or parent.owner != from_agent:
        whose = (
            "a task the run never saw"
            if parent is None
            else (f"owned by {parent.owner}" if parent.owner else "released by its owner")
        )
        return (
            Reason.LINEAGE_REQUIRED,
            f"parent_task_id {parent_id} is not {from_agent}'s: {whose}",
        )
    return None


def depth_of(st: RunState, req: Handoff | HandoffRequested, node: TaskNode | None) -> int:
    """The task's depth in the run's tree; ``node`` is the task's node if it has one."""
    if node is not None:
        return node.depth
    parent_id = (req if type(req) is Handoff else handoff_of(req)).parent_task_id
    if parent_id is None:
        return 1
    parent = st.task(parent_id)
    # a parent Baton never saw is taken as a root: depth is computed, never trusted
    return (parent.depth if parent is not None else 1) + 1


def on_chain(st: RunState, req: Handoff, node: TaskNode | None = None) -> bool:
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


def cycle_rule(st: RunState, req: Handoff, node: TaskNode | None = None) -> Refusal | None:
    """multi_agent.detect_delegation_cycles -> delegation_cycle: the task would go back to an
    agent already on its delegation chain (``node``: the task's, if the run knows it)."""
    if on_chain(st, req, node):
        return (
            Reason.DELEGATION_CYCLE,
            f"{req.to_agent} is already on the chain (or it is over {MAX_CHAIN_HOPS} tasks long)",
        )
    return None


# ---------------------------------------------------------------- cycles without task links


def bounce_rule(st: RunState, req: Handoff, max_bounces: int) -> Refusal | None:
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


def count_bounce(st: RunState, req: Handoff) -> None:
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
