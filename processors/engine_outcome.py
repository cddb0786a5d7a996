"""What an outcome does to the run's state: an allow locks the task, counts the handoff and
reserves its estimate; a budget stop ends the run.

The engine (processors/engine.py) and the approval flow (processors/approvals.py, after a
grant) apply their outcomes here. Containers are replaced, never changed in place: the state
a run's new state was copied from shares them (RunState.copy).
"""

from __future__ import annotations

from sys import intern
from typing import Final

from baton.processors.decision_builder import DecisionContext
from baton.processors.engine_budget import reserve
from baton.processors.engine_fields import Handoff, handoff_of
from baton.processors.rule_checks import budget_exhausted, count_bounce
from baton.processors.state import RunState, TaskNode
from baton.schemas.decision import Reason
from baton.schemas.events import HandoffRequested

__all__ = ["STICKY_REASONS", "apply_allow", "apply_stop"]

#: stops that end the run for good (the run stays stopped); other stops refuse one handoff
#: (a completion's stop, whatever its reason, also ends the run: see _post_handoff)
STICKY_REASONS: Final = frozenset(
    {
        Reason.HANDOFF_BUDGET_EXCEEDED,
        Reason.SHARED_BUDGET_EXCEEDED,
        Reason.STEP_BUDGET_EXCEEDED,
    }
)

# (Final: a compiled module reads them from C statics, not through the module's dict)
_intern: Final = intern
#: a TaskNode made as its class's own __new__ makes it, without calling that (a Python
#: function: ~1.5k instructions a node, compiled; one a new task's allow)
_new_node: Final = tuple.__new__
_TaskNode: Final = TaskNode
_SHARED: Final = Reason.SHARED_BUDGET_EXCEEDED


def apply_allow(
    st: RunState,
    request: Handoff | HandoffRequested,
    depth: int,
    node: TaskNode | None,
    ctx: DecisionContext,
) -> None:
    """An allowed handoff: the task locked to ``to_agent``, its agents joined, the handoff
    counted (and its bounce), its estimate reserved. ``request``: the handoff's fields
    (engine_fields), or the event (approvals.py)."""
    req = request if type(request) is Handoff else handoff_of(request)
    # tasks, agents, reserved, pending and bounces are replaced, never changed in place: the
    # state this one was copied from shares them (RunState.copy)
    # the names interned: the task node and the agents keep them for the run's life, and an
    # event's own copies would be each run's (~55 bytes a name)
    task_id, from_agent, to_agent = req.task_id, _intern(req.from_agent), _intern(req.to_agent)
    if node is None:
        st.add_task(
            task_id, _new_node(_TaskNode, (to_agent, from_agent, req.parent_task_id, depth))
        )
    elif not node.owner:  # released: the task keeps its place in the tree, gets an owner
        st.add_task(task_id, _new_node(_TaskNode, (to_agent, from_agent, node.parent, node.depth)))
    agents = st.agents
    if from_agent not in agents or to_agent not in agents:
        st.agents = {**agents, from_agent: None, to_agent: None}
    st.handoff_count += 1
    rules = ctx.rules
    if rules.max_bounces is not None:
        count_bounce(st, req)  # (a native call when compiled: no Final alias)
    if req.estimated_usd or req.estimated_tool_calls:
        reserve(st, req, rules, ctx.now_ts)


def apply_stop(st: RunState, reason: str, ctx: DecisionContext) -> None:
    """A stopped handoff: a budget stop ends the run (a stop on an *estimate* does not: a
    smaller request may still fit); shadow mode ends nothing."""
    rules = ctx.rules
    sticky = reason in STICKY_REASONS and not rules.shadow_mode
    if sticky and (reason != _SHARED or budget_exhausted(st, rules, ctx.now_ts)):
        st.stopped = reason
