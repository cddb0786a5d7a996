"""The limits of one tenant (the seed's ``multi_agent:`` block) and the matching they need."""

from __future__ import annotations

from functools import cached_property
from typing import Annotated, Any

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from baton.schemas.decision import Fallback, Reason
from baton.schemas.names import fold
from baton.schemas.policy_approval import ApprovalPolicy
from baton.schemas.policy_roles import RolePolicy, ToolPolicy, match_any
from baton.schemas.policy_types import (
    Globs,
    Names,
    NonNegInt,
    NonNegNumber,
    PositiveNumber,
    StrictModel,
    name_keyed,
)

__all__ = ["LEFT_OUT_AT_DEFAULT", "MultiAgentPolicy"]

#: keys added after policy documents were first recorded (the worker's `policy_in_force`
#: record, replay's policies), left out of a dump at their defaults: the document of a
#: policy that does not set them is the one it had before they existed, byte for byte, and
#: a Baton that predates them still reads it (it refuses keys it does not know)
LEFT_OUT_AT_DEFAULT: dict[str, Any] = {"require_lineage": False}


class MultiAgentPolicy(StrictModel):
    """The limits of one tenant. ``None`` means "no limit" for every ``max_*`` key."""

    max_agents_per_run: NonNegInt | None = Field(
        None,
        description="distinct agents in a run (the `from_agent` and `to_agent` of its "
        "handoffs); a handoff that brings in one too many is `stop agent_limit_exceeded`",
    )
    max_handoffs: NonNegInt | None = Field(
        None,
        description="handoffs allowed per run; the next one is `stop handoff_budget_exceeded`",
    )
    max_delegation_depth: NonNegInt | None = Field(
        None,
        description="deepest delegation: depth = depth of the parent task + 1, computed by "
        "Baton from the task tree, never taken from the client; deeper is "
        "`stop delegation_depth_exceeded`",
    )
    shared_max_usd: NonNegNumber | None = Field(
        None,
        description="USD one run may spend across all its agents (reported by completions; "
        "an allow reserves the request's `estimated_usd` until its completion); over it is "
        "`stop shared_budget_exceeded`",
    )
    shared_max_tool_calls: NonNegInt | None = Field(
        None,
        description="tool calls one run may make across all its agents; over it is "
        "`stop shared_budget_exceeded`",
    )
    max_run_seconds: NonNegNumber | None = Field(
        None,
        description="wall-clock seconds from a run's first event (on the worker's clock); a "
        "handoff after it is `stop shared_budget_exceeded`",
    )
    require_approval_for: Globs = Field(
        default_factory=list,
        description="globs over a handoff's `action`, `tool` and `tools`; a match without a "
        "valid grant is `approval_required` (then `allow approval_granted` or `stop "
        "approval_denied` / `approval_expired`); `*` gates every handoff, one naming none too. "
        "A completion reporting a matching tool its handoff was not granted for (by name, under "
        "its own request id, task and agent) is `stop tool_not_permitted`",
    )
    approval: ApprovalPolicy = Field(
        default_factory=ApprovalPolicy, description="the approval gate: TTL, approvers, keys"
    )
    roles: Annotated[dict[str, RolePolicy], name_keyed("agent names")] = Field(
        default_factory=dict,
        description="agent name -> what it may own and whom it may delegate to; names match "
        "the events' agent names in their folded form (NFKC, case: `Researcher` is "
        "`researcher`), and two keys that fold to one name are refused; an agent not listed "
        "is unrestricted, unless `strict_roles` is on",
    )
    strict_roles: bool = Field(
        False,
        description="true: a handoff from or to an agent not listed under `roles` is `stop "
        "role_not_permitted` (list every agent, the planner too; `{}` gives one no "
        "restriction); needs at least one agent under `roles`",
    )
    tools: ToolPolicy = Field(
        default_factory=ToolPolicy,
        description="tool allow and block lists for every agent (a handoff's `tool` and "
        "`tools`, a completion's `tools`)",
    )
    detect_delegation_cycles: bool = Field(
        False,
        description="a task handed back to an agent already on its delegation chain "
        "(A -> B -> A) is `stop delegation_cycle`: the chain above the request's "
        "`parent_task_id` and above the task's own parent in the run's tree; one over 256 "
        "tasks long (or parent links that loop) is taken as a cycle",
    )
    require_lineage: bool = Field(
        False,
        description="true: a handoff from an agent other than the run's first (the "
        "`from_agent` of its first allowed handoff, or of the one awaiting approval) must name "
        "a `parent_task_id` that `from_agent` owns in the run's tree (a released task: its own "
        "parent), else `stop lineage_required`: without it an "
        "agent can start a fresh chain (no parent, or a task id the run never saw) and "
        "`max_delegation_depth` and `detect_delegation_cycles` never see the chain it is on. "
        "`from_agent` is taken as the event names it: an orchestrator that names the run's "
        "first agent as the giver is not caught (`max_bounces` holds whatever the names)",
    )
    max_bounces: NonNegInt | None = Field(
        None,
        description="how often two agents may hand work back and forth in a run, whatever "
        "the task ids (A -> B then B -> A is one bounce; so is closing a loop of three, "
        "A -> B -> C -> A, for the pair that closes it); the next bounce is `stop "
        "delegation_cycle`; null: not counted",
    )
    max_steps: NonNegInt | None = Field(
        None,
        description="the run's total of the `steps` its completions report; a completion "
        "that goes over it, and every handoff once it is reached, is `stop "
        "step_budget_exceeded` (the run stays stopped); null: no limit",
    )
    reservation_ttl_seconds: PositiveNumber | None = Field(
        None,
        description="an estimate reserved when a handoff is allowed (`estimated_usd`, "
        "`estimated_tool_calls`) is released this long after if no completion settled it "
        "(`recorded reservation_expired`); the TTL in force at the allow applies; null: held "
        "until the completion",
    )
    release_ownership_on: Names = Field(
        default_factory=lambda: ["error", "cancelled"],
        description="completion statuses that free the task so that another agent may own it "
        "(`recorded ownership_released`), folded like the events' `status` (`Error` is "
        "`error`); only a completion by the task's owner frees it; []: a task keeps its "
        "first owner",
    )
    fallback: Fallback = Field(
        Fallback.SINGLE_AGENT,
        description="the `fallback` every stop carries: what the orchestrator switches to",
    )
    #: keyed by Reason so that a misspelt reason is an error, not a silently unused entry
    fallback_by_reason: dict[Reason, Fallback] = Field(
        default_factory=dict,
        description="reason -> fallback, over `fallback` for stops with that reason",
    )
    shadow_mode: bool = Field(
        False,
        description="decide and record, never block: a stop or approval_required is published "
        "as allow (`recorded` after a handoff) with the outcome it would have had in "
        "`shadow_outcome`; kill switches and the worker's own limits still stop",
    )

    @model_serializer(mode="wrap")
    def _without_new_keys_at_default(self, handler: SerializerFunctionWrapHandler) -> Any:
        dumped = handler(self)
        for key, default in LEFT_OUT_AT_DEFAULT.items():
            if type(dumped) is dict and dumped.get(key, default) == default:
                dumped.pop(key, None)
        return dumped

    @model_validator(mode="after")
    def _strict_roles_list_agents(self) -> MultiAgentPolicy:
        # the engine asks the role map only when it lists an agent: strict_roles over an
        # empty map would refuse nobody, the opposite of what it says
        if self.strict_roles and not self.roles:
            raise ValueError(
                "strict_roles: true needs at least one agent under roles (list every agent "
                "that may give or take a handoff)"
            )
        return self

    # the approval gate and the fallback per reason are matched by the policy's compiled
    # form (baton.processors.engine.TenantRules), not here: one copy, the one the engine runs
    @cached_property
    def checks_tools(self) -> bool:
        """True when a tool list (run-wide or an agent's) can refuse a tool."""
        return self.tools.checks or any(
            r.tools is not None and r.tools.checks for r in self.roles.values()
        )

    def tool_refusal(self, agent: str, tools: list[str]) -> str | None:
        """None when ``agent`` may use every one of ``tools``; else the first refused tool,
        the agent and the list that refuses it (``tools.block``, ``roles.<agent>.tools.allow``)."""
        role = self.roles.get(agent)
        own = role.tools if role is not None else None
        for tool in tools:
            which = self.tools.refusal(tool)
            if which is not None:
                return f"tool {tool} is not permitted for {agent} (tools.{which})"
            which = own.refusal(tool) if own is not None else None
            if which is not None:
                return f"tool {tool} is not permitted for {agent} (roles.{agent}.tools.{which})"
        return None

    def approver_permitted(self, approver: str) -> bool:
        return match_any(self.approval.approvers, approver)

    def role_permits(self, from_agent: str, to_agent: str, task_kind: str) -> str | None:
        """None when the role map allows the handoff, else a short explanation."""
        if not self.roles:
            return None
        if self.strict_roles:
            for agent in (from_agent, to_agent):
                if agent not in self.roles:
                    return f"{agent} is not under roles (strict_roles is on)"
        giver = self.roles.get(from_agent)
        if (
            giver
            and giver.may_delegate_to is not None
            and not match_any(giver.may_delegate_to, to_agent)
        ):
            return f"{from_agent} may not delegate to {to_agent}"
        taker = self.roles.get(to_agent)
        # a task kind is a name (folded); a task_id standing in for one is an id: folded here
        # so that may_own's folded globs match it as they match a task_kind
        if taker and taker.may_own is not None and not match_any(taker.may_own, fold(task_kind)):
            return f"{to_agent} may not own tasks of kind {task_kind}"
        return None
