"""What `baton policy check` says beyond "ok": each tenant override, and rules that stop or
gate every handoff (session 29, H3).

A tenant override of ``shadow_mode: true`` (never enforced) printed only ``tenant overrides:
acme``, and a policy that stops every run (``strict_tenants`` with no tenant listed,
``max_agents_per_run: 1``) or gates every handoff behind an approval nobody may give
(``approvers: []``) was "ok" without a word. Both stay valid (fail closed); they are said.
"""

from __future__ import annotations

from typing import Any

from baton.cli.signer import shown
from baton.schemas.names import fold
from baton.schemas.policy import Policy

__all__ = ["policy_warnings", "signer_not_an_operator", "tenant_lines"]

#: tenants listed one line each; the rest counted
MAX_TENANTS_SHOWN = 20


def _value(key: str, value: Any) -> str:
    if key == "shadow_mode" and value:
        return "shadow_mode on (decisions are recorded, never enforced)"
    if value is None:
        return f"{key}: unlimited"
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return f"{key}: {text if len(text) <= 80 else text[:77] + '...'}"


def tenant_lines(policy: Policy) -> list[str]:
    """A line for each tenant override: the keys in which it differs from ``multi_agent``."""
    base = policy.multi_agent.model_dump()
    lines = []
    names = sorted(policy.tenants)
    for name in names[:MAX_TENANTS_SHOWN]:
        own = policy.tenants[name].model_dump()
        changed = [_value(k, v) for k, v in own.items() if v != base.get(k)]
        lines.append(f"tenant {shown(name)}: {'; '.join(changed) or 'as multi_agent'}")
    if len(names) > MAX_TENANTS_SHOWN:
        lines.append(f"... and {len(names) - MAX_TENANTS_SHOWN} more tenants")
    return lines


def policy_warnings(policy: Policy) -> list[str]:
    """Rules under which every run or every gated handoff is stopped (valid: fail closed)."""
    said = []
    if policy.strict_tenants and not policy.tenants:
        said.append(
            "strict_tenants is on and no tenant is listed under tenants: every run is stopped "
            "(unknown_tenant)"
        )
    scopes = [("multi_agent", policy.multi_agent)]
    scopes += [(f"tenants.{name}", rules) for name, rules in sorted(policy.tenants.items())]
    for where, rules in scopes:
        if rules.max_agents_per_run == 1:
            said.append(
                f"{where}.max_agents_per_run is 1: a handoff to another agent brings a second "
                "one, so every handoff but an agent's to itself is stopped"
            )
        if rules.require_approval_for and not rules.approval.approvers:
            said.append(
                f"{where}.approval.approvers is empty: nobody may answer an approval, so every "
                f"handoff {where}.require_approval_for gates waits and is stopped "
                "(approval_expired)"
            )
    return said


def signer_not_an_operator(policy: Policy, signer: str) -> str | None:
    """Why publishing ``policy`` as ``signer`` locks the signer out (None: it does not)."""
    if not policy.operators or fold(signer) in policy.operators:
        return None
    names = ", ".join(sorted(shown(n) for n in policy.operators)[:5])
    return (
        f"{shown(signer)} is not among this policy's operators ({names}): once a worker applies "
        "it, only they may sign kill switches, releases and policy updates"
    )
