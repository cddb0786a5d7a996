"""The policy's compiled form: one tenant's limits as plain attributes, built once per policy.

The engine reads a dozen limits per decision; on a pydantic model each read takes the slow
attribute path (``BaseModel.__getattr__`` keeps CPython 3.11 from specialising it), on a
slotted object it does not (bench/RESULTS.md). With policy_tenant.py (a tenant's rules: the
approval gate's globs, the fallback per reason) this is the only place a limit's matching
lives (and which tenant's limits a run gets), so the tests of the policy exercise what the
engine runs.

Compiled in the compiled build (``rules_for``: a few calls a decision); the tenant's rules
themselves stay interpreted (policy_tenant.py, whose names this module re-exports).
"""

from __future__ import annotations

from typing import Any, Final

from baton.processors.policy_tenant import (
    BUDGET_TOLERANCE,
    HARD_MAX_HANDOFFS,
    Budget,
    TenantRules,
)
from baton.schemas.policy import Policy

__all__ = [
    "BUDGET_TOLERANCE",
    "HARD_MAX_HANDOFFS",
    "Budget",
    "CompiledPolicy",
    "TenantRules",
    "rules_for",
]


class CompiledPolicy:
    """A policy's compiled form: the default rules and each tenant's, built once per policy
    object and kept on it (so it lives and dies with the policy: no module-level cache, no
    ``id()`` that a new policy could reuse).

    Kept in the policy's instance ``__dict__``, where pydantic keeps ``cached_property``
    values too (ignored by ``==``, ``model_dump`` and the version hash). A copy of the policy
    (``model_copy``, pickle for the replay pool) carries no compiled form: ``of`` checks that
    the form was built for this very object, and the form pickles and copies as nothing (its
    parsed public keys do not pickle).
    """

    __slots__ = ("default", "policy", "tenants")

    def __init__(self, policy: Policy) -> None:
        version = policy.version
        self.policy = policy
        self.default = TenantRules(policy.multi_agent, version)
        self.default.unknown_tenant = policy.strict_tenants
        self.tenants = {name: TenantRules(lim, version) for name, lim in policy.tenants.items()}

    @classmethod
    def of(cls, policy: Policy) -> CompiledPolicy:
        """``policy``'s compiled form, built on first use."""
        compiled: CompiledPolicy | None = policy.__dict__.get(_SLOT)
        if compiled is None or compiled.policy is not policy:
            compiled = policy.__dict__[_SLOT] = cls(policy)
        return compiled

    def __reduce__(self) -> tuple[Any, ...]:
        return (_nothing, ())

    def __copy__(self) -> None:
        return None

    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        return None


#: the key of a policy's compiled form in its ``__dict__`` (not a field name: pydantic fields
#: cannot start with an underscore)
_SLOT: Final = "_baton_compiled_rules"


def _nothing() -> None:
    return None


def rules_for(policy: Policy, tenant: Any) -> TenantRules:
    """The compiled limits ``policy`` applies to ``tenant``'s runs (its own under
    ``tenants``, else ``multi_agent``); compiled once per policy object. (``tenant`` is a
    run's, as a record holds it: Any, unchecked in the compiled build.)"""
    compiled: CompiledPolicy | None = policy.__dict__.get(_SLOT)
    if compiled is None or compiled.policy is not policy:
        compiled = CompiledPolicy.of(policy)
    tenants = compiled.tenants
    return tenants.get(tenant, compiled.default) if tenants else compiled.default
