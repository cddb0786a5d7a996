"""The whole policy document: tenant defaults and overrides, operators, its version hash."""

from __future__ import annotations

import hashlib
from functools import cached_property
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from baton.schemas.policy_approval import OperatorKeys
from baton.schemas.policy_limits import MultiAgentPolicy
from baton.schemas.policy_seed import Budgets, Controls, ToolLists, Writes, fold_seed_blocks
from baton.schemas.policy_types import name_keyed

__all__ = ["Policy"]


class Policy(BaseModel):
    """Defaults plus per-tenant overrides; ``version`` hashes the whole document."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    multi_agent: MultiAgentPolicy = Field(
        default_factory=MultiAgentPolicy,
        description="the limits of every tenant (the seed's block)",
    )
    tenants: Annotated[dict[str, MultiAgentPolicy], name_keyed("tenant names")] = Field(
        default_factory=dict,
        description="tenant name -> keys merged over `multi_agent` for that tenant (mapping "
        "by mapping; lists and values replaced whole); names folded like the events' `tenant`",
    )
    label: str | None = Field(
        None,
        description='free-form label shown next to the hash, e.g. "2026-11-25 refunds need '
        'approval"',
    )
    operators: OperatorKeys = Field(
        default_factory=dict,
        description="operator name -> public key; when set, kill switches, releases and "
        "policy updates count only when signed by one of these "
        "(baton.schemas.signing.control_payload)",
    )
    strict_tenants: bool = Field(
        False,
        description="true: a run whose tenant is not a key of `tenants` is refused "
        "(`stop unknown_tenant`); tenant names are compared in their folded form (NFKC, "
        'case: "Acme" is "acme"), and an event\'s tenant with a space or an invisible '
        "character is refused before any rule (a `bad_name` dead letter)",
    )
    # the seed's OnceOnly-style blocks: loaded onto multi_agent keys (baton.schemas.
    # policy_seed), kept here for the schema and the docs, left out of the version hash
    budgets: Budgets | None = Field(
        None,
        exclude=True,
        description="the seed's budgets block, for the whole run: `max_steps`, "
        "`max_tool_calls`, `max_seconds`, `max_usd` become `multi_agent.max_steps`, "
        "`shared_max_tool_calls`, `max_run_seconds`, `shared_max_usd`",
    )
    policy: ToolLists | None = Field(
        None,
        exclude=True,
        description="the seed's tool lists: `tool_allowlist` and `tool_blocklist` become "
        "`multi_agent.tools.allow` and `tools.block`",
    )
    writes: Writes | None = Field(
        None,
        exclude=True,
        description="the seed's `require_approval`: globs added to "
        "`multi_agent.require_approval_for` (`true`: every handoff)",
    )
    controls: Controls | None = Field(
        None,
        exclude=True,
        description="the seed's `kill_switch`: must be true (Baton's kill switch cannot be "
        "turned off by a policy)",
    )

    @model_validator(mode="before")
    @classmethod
    def _fold_seed_blocks(cls, data: Any) -> Any:
        # parse_policy folds before it merges tenants; this catches a document validated
        # directly, so that a seed block is never silently left unenforced
        if not isinstance(data, dict):
            return data
        folded, problems = fold_seed_blocks(data)
        if problems:
            raise ValueError("; ".join(problems))
        return folded

    @cached_property
    def version(self) -> str:
        """Hash of the policy in force; every decision carries it.

        Keys added after the first release are hashed only when they differ from their
        default, so a policy keeps its version across upgrades (the audit and replay find a
        policy by it).
        """
        doc = self.model_dump(mode="json")
        for limits in (doc["multi_agent"], *doc["tenants"].values()):
            _drop_defaults(limits, _ADDED_LATER)
            for role in limits["roles"].values():
                _drop_defaults(role, _ADDED_LATER_ROLE)
        canonical = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()[:16]


#: multi_agent keys added after policies were first hashed, with their defaults as dumped
_ADDED_LATER: dict[str, Any] = {
    "max_bounces": None,
    "max_steps": None,
    "reservation_ttl_seconds": None,
    "release_ownership_on": ["error", "cancelled"],
    "strict_roles": False,
    "require_lineage": False,
}
_ADDED_LATER_ROLE: dict[str, Any] = {"tools": None}


def _drop_defaults(dumped: dict[str, Any], defaults: dict[str, Any]) -> None:
    for key, default in defaults.items():
        if dumped.get(key, default) == default:
            dumped.pop(key, None)
