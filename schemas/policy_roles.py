"""Which tools an agent may use and what it may own or delegate: the tool and role models.

Every list here is globs over names, folded like the names they match (baton.schemas.names);
``match_any`` and ``compile_globs`` are the one glob matching of the policy.
"""

from __future__ import annotations

import fnmatch
import re

from pydantic import Field

from baton.schemas.policy_types import Globs, StrictModel

__all__ = ["RolePolicy", "ToolPolicy", "compile_globs", "match_any"]


class ToolPolicy(StrictModel):
    """Which tools may be used: run-wide (`tools`) or by one agent (`roles.<agent>.tools`)."""

    allow: Globs | None = Field(
        None,
        description="globs of tools that may be used; null = all that are not blocked; "
        "another tool is `stop tool_not_permitted`",
    )
    block: Globs = Field(
        default_factory=list,
        description="globs of tools that may never be used (wins over allow): "
        "`stop tool_not_permitted`",
    )

    def refusal(self, tool: str) -> str | None:
        """None when ``tool`` may be used, else the list that refuses it: "block" or "allow"."""
        if self.block and match_any(self.block, tool):
            return "block"
        if self.allow is not None and not match_any(self.allow, tool):
            return "allow"
        return None

    @property
    def checks(self) -> bool:
        """True when either list can refuse a tool."""
        return bool(self.block) or self.allow is not None


class RolePolicy(StrictModel):
    """What one agent may own, whom it may delegate to, and which tools it may use."""

    may_own: Globs | None = Field(
        None,
        description="globs over task kinds this agent may own (a request's `task_kind`, else "
        "its `task_id`); null = any; otherwise `stop role_not_permitted`",
    )
    may_delegate_to: Globs | None = Field(
        None,
        description="globs over agent names this agent may delegate to; null = anyone; "
        "otherwise `stop role_not_permitted`",
    )
    tools: ToolPolicy | None = Field(
        None,
        description="the tools this agent may use, on top of the run-wide `tools`: a handoff "
        "to it naming one (`tool`, `tools`) that `block` matches or `allow` does not is `stop "
        "tool_not_permitted`; so is a completion by it reporting one (`tools`), and the run "
        "stays stopped",
    )


def compile_globs(globs: list[str]) -> re.Pattern[str] | None:
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))


def match_any(globs: list[str], name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)
