"""What a policy changes about who may command Baton: said by `policy check` and `publish`.

A policy's ``operators`` sign kill switches, releases and policy updates; its
``approval.keys`` sign grants. A policy published without them turns that signing off: from
then on any writer of gov.control lifts kills and replaces the policy, any writer of
gov.approvals grants. One publish of an old file (or one a merge dropped the block from) did
that without a word (H2, session 33). `baton policy publish` now says every such change
against the policy in force and refuses one that turns signing off unless
``--allow-unsigned`` confirms it; `baton policy check` lists both.
"""

from __future__ import annotations

from baton.cli.signer import shown
from baton.schemas.policy import MultiAgentPolicy, Policy

__all__ = ["security_changes", "signing_dropped", "signing_lines"]

#: lines of changes shown; the rest counted
_MAX_LINES = 20


def _names(keys: object) -> str:
    names = sorted(shown(str(name)) for name in keys)  # type: ignore[attr-defined]
    text = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return text or "none"


def signing_lines(policy: Policy) -> list[str]:
    """`policy check`'s lines on who signs what under ``policy``."""
    lines = [
        f"operators: {_names(policy.operators)} (kill switches, releases and policy updates "
        "count only signed by one)"
        if policy.operators
        else "operators: none (kill switches, releases and policy updates are taken unsigned "
        "from any writer of gov.control: docs/security.md)"
    ]
    approval = policy.multi_agent.approval
    if approval.keys:
        lines.append(f"approval.keys: {_names(approval.keys)} (grants count only signed by one)")
    elif policy.multi_agent.require_approval_for:
        lines.append("approval.keys: none (a grant counts unsigned from any approver allowed)")
    for name, rules in sorted(policy.tenants.items()):
        if rules.approval.keys != approval.keys:  # a tenant's own signers
            keys = _names(rules.approval.keys)
            lines.append(f"tenant {shown(name)} approval.keys: {keys}")
    return lines


def _scopes(policy: Policy, names: set[str]) -> list[tuple[str, MultiAgentPolicy]]:
    """multi_agent and each tenant in ``names``: its rules (multi_agent's when not listed)."""
    scopes = [("multi_agent", policy.multi_agent)]
    scopes += [(f"tenant {shown(n)}", policy.tenants.get(n, policy.multi_agent)) for n in names]
    return scopes


def _both(before: Policy, after: Policy) -> list[tuple[str, MultiAgentPolicy, MultiAgentPolicy]]:
    names = sorted(set(before.tenants) | set(after.tenants))
    return [
        (where, old, new)
        for (where, old), (_, new) in zip(
            _scopes(before, set(names)), _scopes(after, set(names)), strict=True
        )
    ]


def signing_dropped(before: Policy, after: Policy) -> list[str]:
    """What publishing ``after`` over ``before`` leaves unsigned that was signed."""
    dropped = []
    if before.operators and not after.operators:
        dropped.append(
            f"operators: {_names(before.operators)} -> none (kill switches, releases and policy "
            "updates taken unsigned from any writer of gov.control)"
        )
    for where, old, new in _both(before, after):
        if old.approval.keys and not new.approval.keys:
            dropped.append(
                f"{where} approval.keys: {_names(old.approval.keys)} -> none (grants counted "
                "unsigned)"
            )
    return dropped


def security_changes(before: Policy, after: Policy) -> list[str]:
    """Each change of who may command or approve, and of what is enforced at all."""
    lines = []
    gone = sorted(set(before.operators) - set(after.operators))
    new = sorted(set(after.operators) - set(before.operators))
    rekeyed = sorted(
        n
        for n in set(before.operators) & set(after.operators)
        if before.operators[n] != after.operators[n]
    )
    for label, names in (("removed", gone), ("added", new), ("key changed", rekeyed)):
        if names:
            lines.append(f"operators {label}: {_names(names)}")
    if before.strict_tenants and not after.strict_tenants:
        lines.append("strict_tenants: on -> off (a tenant not listed is decided, not refused)")
    for where, old, new_rules in _both(before, after):
        lines += _scope_changes(where, old, new_rules)
    if len(lines) > _MAX_LINES:
        lines = [*lines[:_MAX_LINES], f"... and {len(lines) - _MAX_LINES} more"]
    return lines


def _scope_changes(where: str, old: MultiAgentPolicy, new: MultiAgentPolicy) -> list[str]:
    lines = []
    keys_gone = set(old.approval.keys) - set(new.approval.keys)
    keys_new = set(new.approval.keys) - set(old.approval.keys)
    if keys_gone:
        lines.append(f"{where} approval.keys removed: {_names(keys_gone)}")
    if keys_new:
        lines.append(f"{where} approval.keys added: {_names(keys_new)}")
    rekeyed = [
        n for n in set(old.approval.keys) & set(new.approval.keys)
        if old.approval.keys[n] != new.approval.keys[n]
    ]  # fmt: skip
    if rekeyed:  # another person's key under the same name signs for it from now on
        lines.append(f"{where} approval.keys key changed: {_names(rekeyed)}")
    if list(old.approval.approvers) != list(new.approval.approvers):
        lines.append(
            f"{where} approval.approvers: {_names(old.approval.approvers)} -> "
            f"{_names(new.approval.approvers)}"
        )
    if not old.approval.allow_self_approval and new.approval.allow_self_approval:
        lines.append(f"{where} approval.allow_self_approval: off -> on")
    less = sorted(set(old.require_approval_for) - set(new.require_approval_for))
    if less:
        lines.append(f"{where} require_approval_for no longer gates: {_names(less)}")
    if not old.shadow_mode and new.shadow_mode:
        lines.append(f"{where} shadow_mode: off -> on (decisions recorded, never enforced)")
    return lines
