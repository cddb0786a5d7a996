"""The seed's OnceOnly-style policy blocks (budgets, policy, writes, controls) as multi_agent keys.

A policy written for a single-agent guard loads as is::

    budgets: {max_steps: 40, max_tool_calls: 120, max_seconds: 900, max_usd: 30}
    policy: {tool_allowlist: ["search.*", "crm.read"]}
    writes: {require_approval: ["billing.*", "*.delete"]}
    controls: {kill_switch: true}

and each key becomes the multi_agent key that enforces it for the whole run (all agents of a
run share one budget, which is what a multi-agent guard adds):

    budgets.max_steps        -> max_steps
    budgets.max_tool_calls   -> shared_max_tool_calls
    budgets.max_seconds      -> max_run_seconds
    budgets.max_usd          -> shared_max_usd
    policy.tool_allowlist    -> tools.allow
    policy.tool_blocklist    -> tools.block
    writes.require_approval  -> added to require_approval_for (true: "*", every handoff,
                                one naming no action or tool too)
    controls.kill_switch     -> nothing to set: Baton's kill switch is always on; false is refused

A seed key fills its multi_agent key; both set to different values is an error naming both
(which one should win would be a guess). The blocks are top-level only: tenants override
multi_agent keys, and inherit what the blocks set there.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, field_validator

from baton.schemas.policy_types import Globs, NonNegInt, NonNegNumber, StrictModel

__all__ = [
    "SEED_BLOCKS",
    "Budgets",
    "Controls",
    "ToolLists",
    "Writes",
    "fold_seed_blocks",
    "seed_mapping",
]

#: one step of the mapping: (seed key path, multi_agent key path, value)
Mapped = tuple[str, tuple[str, ...], Any]


class Budgets(StrictModel):
    """The seed's budgets, enforced for the run as a whole (every agent of it together)."""

    max_steps: NonNegInt | None = Field(None, description="becomes `multi_agent.max_steps`")
    max_tool_calls: NonNegInt | None = Field(
        None, description="becomes `multi_agent.shared_max_tool_calls`"
    )
    max_seconds: NonNegNumber | None = Field(
        None, description="becomes `multi_agent.max_run_seconds`"
    )
    max_usd: NonNegNumber | None = Field(None, description="becomes `multi_agent.shared_max_usd`")

    def mapped(self) -> list[Mapped]:
        keys = (
            ("max_steps", "max_steps"),
            ("max_tool_calls", "shared_max_tool_calls"),
            ("max_seconds", "max_run_seconds"),
            ("max_usd", "shared_max_usd"),
        )
        return [
            (f"budgets.{seed}", (ours,), getattr(self, seed))
            for seed, ours in keys
            if getattr(self, seed) is not None
        ]


class ToolLists(StrictModel):
    """The seed's ``policy:`` block: which tools agents may use."""

    tool_allowlist: Globs | None = Field(None, description="becomes `multi_agent.tools.allow`")
    tool_blocklist: Globs | None = Field(None, description="becomes `multi_agent.tools.block`")

    def mapped(self) -> list[Mapped]:
        out: list[Mapped] = []
        if self.tool_allowlist is not None:
            out.append(("policy.tool_allowlist", ("tools", "allow"), self.tool_allowlist))
        if self.tool_blocklist is not None:
            out.append(("policy.tool_blocklist", ("tools", "block"), self.tool_blocklist))
        return out


class Writes(StrictModel):
    """The seed's ``writes:`` block: which actions need a human's approval."""

    require_approval: Annotated[bool, Field(strict=True)] | Globs = Field(
        False,
        description="globs over a handoff's `action` and tools, added to "
        "`multi_agent.require_approval_for`; `true` means every action and tool (`*`: Baton "
        "cannot tell a write from a read, so it asks for all; list the writes to narrow it). "
        "A `*` among the globs gates every handoff, one that names no `action`, `tool` or "
        "`tools` too",
    )

    @field_validator("require_approval", mode="wrap")
    @classmethod
    def _bool_or_globs(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:  # one line, not one per member of the union
            raise ValueError("must be true, false or a list of globs") from None

    def mapped(self) -> list[Mapped]:
        globs = ["*"] if self.require_approval is True else (self.require_approval or [])
        return [("writes.require_approval", ("require_approval_for",), globs)] if globs else []


class Controls(StrictModel):
    """The seed's ``controls:`` block."""

    kill_switch: bool = Field(
        True,
        description="must be true: Baton's kill switch is always on (`baton kill`, the "
        "control topic) and a policy cannot turn it off",
    )

    @field_validator("kill_switch")
    @classmethod
    def _always_on(cls, value: bool) -> bool:
        if not value:
            raise ValueError(
                "has no meaning here: Baton's kill switch is always on (operators use "
                "`baton kill` on the control topic) and a policy cannot turn it off; remove "
                "the key or set it to true"
            )
        return value

    def mapped(self) -> list[Mapped]:
        return []


#: top-level key -> its model
SEED_BLOCKS: dict[str, type[Budgets | ToolLists | Writes | Controls]] = {
    "budgets": Budgets,
    "policy": ToolLists,
    "writes": Writes,
    "controls": Controls,
}


def seed_mapping(policy: Any) -> list[Mapped]:
    """What a loaded policy's seed blocks set, in block order: (seed key, multi_agent key
    path, value) (``policy``: a :class:`~baton.schemas.policy.Policy`)."""
    out: list[Mapped] = []
    for name in SEED_BLOCKS:
        block = getattr(policy, name, None)
        if block is not None:
            out += block.mapped()
    return out


def fold_seed_blocks(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``doc`` with its seed blocks' values set on its ``multi_agent`` keys, and the conflicts
    (a seed key and its multi_agent key set to different values: the seed's value is kept,
    the problem reported). A block that does not validate is left for the policy model to
    report at its own key path. Folding a folded document changes nothing."""
    if not any(doc.get(name) is not None for name in SEED_BLOCKS):
        return doc, []
    base = doc.get("multi_agent") or {}
    if not isinstance(base, dict):
        return doc, []  # the policy model reports multi_agent itself
    base = dict(base)
    problems: list[str] = []
    for name, model in SEED_BLOCKS.items():
        raw = doc.get(name)
        if raw is None:
            continue
        try:
            block = model.model_validate(raw)
        except ValidationError:
            continue
        for seed_key, path, value in block.mapped():
            problem = _set(base, path, value, seed_key)
            if problem:
                problems.append(problem)
    return {**doc, "multi_agent": base}, problems


def _set(base: dict[str, Any], path: tuple[str, ...], value: Any, seed_key: str) -> str | None:
    """Set ``base[path]`` to ``value`` (globs for require_approval_for are added, never
    replaced); a different value already there is a conflict, reported."""
    parent = base
    for part in path[:-1]:
        inner = parent.get(part)
        inner = dict(inner) if isinstance(inner, dict) else {}
        parent[part] = inner
        parent = inner
    key = path[-1]
    current = parent.get(key)
    if key == "require_approval_for":
        have = list(current) if isinstance(current, list) else []
        parent[key] = have + [g for g in value if g not in have]
        return None
    parent[key] = value
    # an empty block list blocks nothing, so the seed's list only adds to it; an empty allow
    # list allows nothing, and replacing it with the seed's would widen it in silence
    if current is None or current == value or (current == [] and key == "block"):
        return None
    ours = "multi_agent." + ".".join(path)
    return (
        f"{seed_key}: {_text(value)} conflicts with {ours}: {_text(current)}; set one of them "
        f"(the seed's key becomes {ours})"
    )


def _text(value: Any) -> str:
    if isinstance(value, list):
        return str(value).replace("'", '"')
    return f"{value:g}" if isinstance(value, float) else repr(value)
