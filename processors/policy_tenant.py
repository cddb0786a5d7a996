"""One tenant's limits as a slotted object (TenantRules) and the budget thresholds (Budget):
the part of the policy's compiled form that stays interpreted in the compiled build.

``baton replay`` watches a tenant's rules by subclassing TenantRules at run time and shadowing
the slots it watches with properties (replay_share). Compiled, neither works: mypyc checks a
native or Python class of its own by exact type (refusing the subclass; it ignores
``allow_interpreted_subclasses`` on a ``native_class=False`` class), and a compiled read of a
native class's attribute takes the slot even where a subclass shadows it. The rest of the
compiled form (``CompiledPolicy``, ``rules_for``) is compiled in policy_rules.py, which
re-exports these names; import them from there.
"""

from __future__ import annotations

import math
from typing import Any, Final, NamedTuple

from baton.schemas.decision import Fallback
from baton.schemas.events import MAX_RUN_COUNT, MAX_RUN_USD
from baton.schemas.policy import MultiAgentPolicy, compile_globs
from baton.schemas.signing import parse_public_key

__all__ = ["BUDGET_TOLERANCE", "HARD_MAX_HANDOFFS", "Budget", "TenantRules"]

#: without a max_handoffs limit, a run still cannot grow its task tree past this
HARD_MAX_HANDOFFS: Final = 10_000
#: money is summed in floats: a total within this of its limit is at the limit, not over it
BUDGET_TOLERANCE: Final = 1e-9


class Budget(NamedTuple):
    """One budget limit as the two totals the rules compare with (the one budget comparison,
    computed once per policy): a total >= ``reached`` leaves nothing for another handoff; a
    total > ``over`` is past the limit (after a cost is counted, or with an estimate added).
    Within BUDGET_TOLERANCE of the limit is at it; no limit is infinity (never reached).

    A run's totals saturate at ``top`` (engine_budget.count_cost: MAX_RUN_USD, MAX_RUN_COUNT),
    where Baton no longer knows how far past it the run is: a total at ``top`` is past any
    limit from there up (a policy may set up to 2**53; a limit above the saturation was never
    reached, and a run that reported more than it went on being allowed)."""

    #: floats (Any: a what-if replay's Dual, see TenantRules)
    reached: Any
    over: Any

    @classmethod
    def of(cls, limit: float | None, top: float = math.inf) -> Budget:
        if limit is None:
            return cls(_INF, _INF)
        below_top = math.nextafter(top, 0.0)
        return cls(min(limit - BUDGET_TOLERANCE, top), min(limit + BUDGET_TOLERANCE, below_top))


_INF = float("inf")


def _cap(limit: float | None) -> float:
    return _INF if limit is None else limit


class TenantRules:
    """One tenant's limits as plain attributes, compiled once per policy: the policy's
    compiled form, the only place the engine's matching of a limit lives (needs_approval,
    fallback_for; which tenant's limits a run gets: policy_rules.rules_for).

    The engine reads a dozen limits per decision; on a pydantic model each read takes the
    slow attribute path (``BaseModel.__getattr__`` keeps CPython from specialising it), on
    a slotted object it does not (bench/RESULTS.md).
    """

    __slots__ = (
        "agents_cap",
        "allow_self_approval",
        "approval_keys",
        "approval_re",
        "approve_all",
        "calls",
        "depth_cap",
        "detect_delegation_cycles",
        "fallback",
        "fallback_by_reason",
        "limits",
        "max_agents_per_run",
        "max_bounces",
        "max_delegation_depth",
        "max_handoffs",
        "max_run_seconds",
        "max_signature_age",
        "max_steps",
        "release_on",
        "require_lineage",
        "reservation_ttl",
        "roles",
        "seconds_cap",
        "shadow_mode",
        "shared_max_tool_calls",
        "shared_max_usd",
        "steps",
        "tools_checked",
        "ttl_seconds",
        "unknown_tenant",
        "usd",
        "version",
    )

    def __init__(self, limits: MultiAgentPolicy, version: str) -> None:
        self.limits = limits
        self.version = version
        self.shadow_mode = limits.shadow_mode
        self.max_agents_per_run = limits.max_agents_per_run
        #: max_handoffs, agents_cap, depth_cap, seconds_cap and the Budgets' totals are Any:
        #: a what-if replay puts a replay_share.Dual in their place (compared as a number)
        self.max_handoffs: Any = (
            HARD_MAX_HANDOFFS if limits.max_handoffs is None else limits.max_handoffs
        )
        self.max_delegation_depth = limits.max_delegation_depth
        self.detect_delegation_cycles = limits.detect_delegation_cycles
        self.require_lineage = limits.require_lineage
        self.shared_max_usd = limits.shared_max_usd
        self.shared_max_tool_calls = limits.shared_max_tool_calls
        self.max_run_seconds = limits.max_run_seconds
        self.max_steps = limits.max_steps
        #: the limits above as the numbers the rules compare with (no limit: infinity, never
        #: passed); compared only, never computed with (the replay's RulesWatch relies on it)
        self.agents_cap: Any = _cap(limits.max_agents_per_run)
        self.depth_cap: Any = _cap(limits.max_delegation_depth)
        self.seconds_cap: Any = _cap(limits.max_run_seconds)
        self.usd = Budget.of(limits.shared_max_usd, MAX_RUN_USD)
        self.calls = Budget.of(limits.shared_max_tool_calls, MAX_RUN_COUNT)
        self.steps = Budget.of(limits.max_steps, MAX_RUN_COUNT)
        self.max_bounces = limits.max_bounces
        self.reservation_ttl = limits.reservation_ttl_seconds
        self.release_on = frozenset(limits.release_ownership_on)
        self.roles = bool(limits.roles)
        self.tools_checked = limits.checks_tools
        self.approval_re = compile_globs(limits.require_approval_for)
        #: "*" (writes.require_approval: true) gates every handoff, also one naming nothing
        self.approve_all = "*" in limits.require_approval_for
        self.ttl_seconds = limits.approval.ttl_seconds
        self.allow_self_approval = limits.approval.allow_self_approval
        #: approver -> public key (parsed once per policy); empty: names are trusted
        self.approval_keys = {
            name: parse_public_key(text) for name, text in limits.approval.keys.items()
        }
        self.max_signature_age = limits.approval.max_signature_age_seconds
        self.fallback = limits.fallback
        self.fallback_by_reason = dict(limits.fallback_by_reason)
        #: these are the rules of tenants not under ``tenants`` and strict_tenants refuses
        #: those (set by CompiledPolicy on its default rules): a run begun before the policy
        #: listed its tenant no more, or before strict_tenants was turned on, is stopped too
        self.unknown_tenant = False

    def needs_approval(
        self, action: str | None, tool: str | None, tools: list[str] | None = None
    ) -> bool:
        rx = self.approval_re
        if rx is None:
            return False
        if self.approve_all:
            return True
        if (action and rx.match(action)) or (tool and rx.match(tool)):
            return True
        return bool(tools) and any(rx.match(t) for t in tools)  # type: ignore[union-attr]

    def fallback_for(self, reason: str) -> Fallback:
        return self.fallback_by_reason.get(reason, self.fallback)
