"""The governance policy: the seed's ``multi_agent:`` block, deployment extras, tenant overrides.

A policy file looks like this (every key optional; the seed's block loads as is)::

    multi_agent:                      # defaults for every tenant
      max_agents_per_run: 4
      max_handoffs: 8
      max_delegation_depth: 3
      shared_max_usd: 30
      shared_max_tool_calls: 120
      max_run_seconds: 3600           # run wall-clock budget
      require_approval_for: [billing.refund.create]   # globs over action and tool
      approval:
        ttl_seconds: 900
        approvers: ["*"]              # globs over approver names
        keys:                         # when set, only grants signed by one of these count
          finance_lead: "ed25519:<base64 public key>"   # from `baton keys new finance_lead`
      roles:                          # agent -> what it may own / whom it may delegate to
        billing_agent: {may_own: ["refund_*"], may_delegate_to: []}
      tools: {allow: ["*"], block: ["shell.*"]}
      detect_delegation_cycles: false
      fallback: single_agent          # or constrained; fallback_by_reason overrides per reason
      shadow_mode: false              # decide and record, never block
    tenants:
      acme: {max_handoffs: 20}        # merged over multi_agent for tenant "acme"
    strict_tenants: false             # true: a tenant not listed under tenants is refused
    operators:                        # who may kill, release and publish policy (signed)
      oncall: "ed25519:<base64 public key>"

:func:`load_policy` turns every problem into a :class:`PolicyError` line naming the key
path, the bad value and the expectation.

The models live in their own modules (``policy_roles``: tools and roles, ``policy_approval``,
``policy_limits``: one tenant's limits, ``policy_document``: the whole document and its
version, ``policy_load``: parsing); import them from here.
"""

from __future__ import annotations

from baton.schemas.policy_approval import MAX_APPROVAL_TTL_S, ApprovalPolicy, PublicKeys
from baton.schemas.policy_document import Policy
from baton.schemas.policy_limits import MultiAgentPolicy
from baton.schemas.policy_load import (
    DEFAULT_POLICY_YAML,
    MAX_POLICY_VALUES,
    load_policy,
    parse_policy,
)
from baton.schemas.policy_roles import RolePolicy, ToolPolicy, compile_globs, match_any

__all__ = [
    "DEFAULT_POLICY_YAML",
    "MAX_APPROVAL_TTL_S",
    "MAX_POLICY_VALUES",
    "ApprovalPolicy",
    "MultiAgentPolicy",
    "Policy",
    "PublicKeys",
    "RolePolicy",
    "ToolPolicy",
    "compile_globs",
    "load_policy",
    "match_any",
    "parse_policy",
]
