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
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import orjson
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from baton.schemas.decision import Fallback, Reason
from baton.schemas.errors import PolicyError
from baton.schemas.policy_errors import describe, show
from baton.schemas.policy_seed import (
    Budgets,
    Controls,
    ToolLists,
    Writes,
    fold_seed_blocks,
)
from baton.schemas.policy_types import Globs, NonNegInt, NonNegNumber, PositiveNumber, StrictModel
from baton.schemas.signing import SigningKeyError, parse_public_key

__all__ = [
    "DEFAULT_POLICY_YAML",
    "MultiAgentPolicy",
    "Policy",
    "compile_globs",
    "load_policy",
    "parse_policy",
]

DEFAULT_POLICY_YAML = """\
# The seed policy: what Baton enforces when no policy file is given.
multi_agent:
  max_agents_per_run: 4
  max_handoffs: 8
  max_delegation_depth: 3
  shared_max_usd: 30
  shared_max_tool_calls: 120
  require_approval_for:
    - billing.refund.create
"""


def _public_key(text: str) -> str:
    try:
        parse_public_key(text, "key")
    except SigningKeyError as exc:
        raise ValueError(str(exc).removeprefix("key: ")) from None
    return text


#: name -> "ed25519:<base64>": a public key the policy trusts for that name
PublicKeys = dict[
    Annotated[str, Field(min_length=1, max_length=256)],
    Annotated[str, AfterValidator(_public_key)],
]


_Strict = StrictModel


#: the longest approval.ttl_seconds, 366 days: the expiry is a time on every approval's
#: decision, and a TTL of 1e10 s put it past what the audit's DateTime64 holds (1e12 s past
#: what Python's datetime holds: the approval's handoff raised instead of being decided)
MAX_APPROVAL_TTL_S = 366 * 86400


class ApprovalPolicy(_Strict):
    """Who may answer an ``approval_required`` decision, and for how long it waits."""

    ttl_seconds: Annotated[float, Field(gt=0, le=MAX_APPROVAL_TTL_S, allow_inf_nan=False)] = Field(
        900.0,
        description="seconds an approval waits for an answer (at most 366 days); none in "
        "time, or a grant after it, ends in `stop approval_expired`",
    )
    approvers: Globs = Field(
        default_factory=lambda: ["*"],
        description='who may approve (globs over approver names); "*" = anyone but the '
        "requesting agent; anyone else is refused (`recorded approver_not_permitted`)",
    )
    allow_self_approval: bool = Field(
        False,
        description="an approver equal to the agent that asked for the handoff is refused "
        "(`recorded self_approval`) unless this is on",
    )
    keys: PublicKeys = Field(
        default_factory=dict,
        description="approver name -> public key (`ed25519:<base64>`, from `baton keys new`); "
        "when set, a grant or denial counts only when signed by the key of the approver it "
        "names (baton.schemas.signing.approval_payload)",
    )
    max_signature_age_seconds: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(
        3600.0,
        description="how old a signature may be when it arrives (a grant signed long ago is "
        "refused: `recorded signature_expired`)",
    )


class ToolPolicy(_Strict):
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
        if self.block and _match_any(self.block, tool):
            return "block"
        if self.allow is not None and not _match_any(self.allow, tool):
            return "allow"
        return None

    @property
    def checks(self) -> bool:
        """True when either list can refuse a tool."""
        return bool(self.block) or self.allow is not None


class RolePolicy(_Strict):
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


class MultiAgentPolicy(_Strict):
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
        "approval_denied` / `approval_expired`); `*` gates every handoff, one naming none too",
    )
    approval: ApprovalPolicy = Field(
        default_factory=ApprovalPolicy, description="the approval gate: TTL, approvers, keys"
    )
    roles: dict[str, RolePolicy] = Field(
        default_factory=dict,
        description="agent name -> what it may own and whom it may delegate to; an agent not "
        "listed is unrestricted",
    )
    tools: ToolPolicy = Field(
        default_factory=ToolPolicy,
        description="tool allow and block lists for every agent (a handoff's `tool` and "
        "`tools`, a completion's `tools`)",
    )
    detect_delegation_cycles: bool = Field(
        False,
        description="a task handed back to an agent already on its delegation chain "
        "(A -> B -> A) is `stop delegation_cycle`",
    )
    max_bounces: NonNegInt | None = Field(
        None,
        description="how often two agents may hand work back and forth in a run, whatever "
        "the task ids (A -> B then B -> A is one bounce); the next bounce is `stop "
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
    release_ownership_on: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=lambda: ["error", "cancelled"],
        description="completion statuses that free the task so that another agent may own it "
        "(`recorded ownership_released`); only a completion by the task's owner frees it; "
        "[]: a task keeps its first owner",
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
        return _match_any(self.approval.approvers, approver)

    def role_permits(self, from_agent: str, to_agent: str, task_kind: str) -> str | None:
        """None when the role map allows the handoff, else a short explanation."""
        if not self.roles:
            return None
        giver = self.roles.get(from_agent)
        if (
            giver
            and giver.may_delegate_to is not None
            and not _match_any(giver.may_delegate_to, to_agent)
        ):
            return f"{from_agent} may not delegate to {to_agent}"
        taker = self.roles.get(to_agent)
        if taker and taker.may_own is not None and not _match_any(taker.may_own, task_kind):
            return f"{to_agent} may not own tasks of kind {task_kind}"
        return None


def compile_globs(globs: list[str]) -> re.Pattern[str] | None:
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))


def _match_any(globs: list[str], name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


class Policy(BaseModel):
    """Defaults plus per-tenant overrides; ``version`` hashes the whole document."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    multi_agent: MultiAgentPolicy = Field(
        default_factory=MultiAgentPolicy,
        description="the limits of every tenant (the seed's block)",
    )
    tenants: dict[str, MultiAgentPolicy] = Field(
        default_factory=dict,
        description="tenant name -> keys merged over `multi_agent` for that tenant (mapping "
        "by mapping; lists and values replaced whole)",
    )
    label: str | None = Field(
        None,
        description='free-form label shown next to the hash, e.g. "2026-11-25 refunds need '
        'approval"',
    )
    operators: PublicKeys = Field(
        default_factory=dict,
        description="operator name -> public key; when set, kill switches, releases and "
        "policy updates count only when signed by one of these "
        "(baton.schemas.signing.control_payload)",
    )
    strict_tenants: bool = Field(
        False,
        description="true: a run whose tenant is not a key of `tenants` is refused "
        '(`stop unknown_tenant`); tenant names are compared exactly ("acme " is not "acme")',
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
}
_ADDED_LATER_ROLE: dict[str, Any] = {"tools": None}


def _drop_defaults(dumped: dict[str, Any], defaults: dict[str, Any]) -> None:
    for key, default in defaults.items():
        if dumped.get(key, default) == default:
            dumped.pop(key, None)


# ---------------------------------------------------------------------------- loading


def parse_policy(text: str, source: str = "policy") -> Policy:
    """Parse and validate policy YAML; raises PolicyError naming every bad key."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PolicyError(
            [f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"], source
        ) from None
    if doc is None:
        doc = {}
    if _expands_past(doc, MAX_POLICY_VALUES):
        raise PolicyError(
            [
                f"<top>: more than {MAX_POLICY_VALUES} values once its YAML aliases (*name) "
                "are expanded, or an alias that contains itself; expected a policy written "
                "out (a few hundred values)"
            ],
            _encodable(source),
        )
    if not isinstance(doc, dict):
        raise PolicyError(
            [f"<top>: must be a mapping with a multi_agent key, got {show(doc)}"], source
        )
    # the seed's blocks fill multi_agent keys first, so that tenants inherit them
    doc, problems = fold_seed_blocks(doc)
    # tenants are partial overrides: merge each over the defaults before validating, so
    # errors point at tenants.<name>.<key> and a tenant inherits every key it does not set
    raw_tenants = doc.get("tenants") or {}
    base = doc.get("multi_agent") or {}
    merged_tenants: dict[str, Any] = {}
    overrides: dict[Any, dict[str, Any]] = {}  # tenant -> what the tenant sets itself
    if isinstance(raw_tenants, dict) and isinstance(base, dict):
        for name, override in raw_tenants.items():
            if isinstance(override, dict):
                override = override.get("multi_agent", override)
            if isinstance(override, dict):
                merged_tenants[name] = _merge(base, override)
                overrides[name] = override
            else:
                merged_tenants[name] = override
        doc = {**doc, "tenants": merged_tenants}
    try:
        policy = Policy.model_validate(doc)
        if not problems:
            return _hashable(policy, source)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = err["loc"]
            tenant = loc[1] if len(loc) > 2 and loc[0] == "tenants" else None
            if tenant in overrides and not _sets(overrides[tenant], loc[2:]):
                continue  # a bad multi_agent key: reported once, at multi_agent.<key>
            problems.append(describe(err, Policy))
    raise PolicyError([_encodable(p) for p in problems], _encodable(source))


#: values (mappings, lists, keys, scalars) a policy may hold with its YAML aliases expanded.
#: A 528-byte file of nested aliases (a "billion laughs") is 10**9 values: validating and
#: quoting it took 35 s and 8 GB, and from gov.control it took every worker down, again on
#: every restart. A real policy holds hundreds; 1,000,000 is checked in about a second.
MAX_POLICY_VALUES = 1_000_000


def _expands_past(doc: Any, limit: int) -> bool:
    """True when ``doc``, aliases expanded, holds more than ``limit`` values (an alias that
    contains itself never ends, so it is past any limit). Stops counting at ``limit``."""
    count, stack = 1, [doc]
    while stack:
        node = stack.pop()
        children: Any = (
            [*node.keys(), *node.values()]
            if isinstance(node, dict)
            else node
            if isinstance(node, list)
            else ()
        )
        count += len(children)
        if count > limit:
            return True
        stack.extend(children)
    return False


def _hashable(policy: Policy, source: str) -> Policy:
    """``policy`` once its version is computed: a policy whose version cannot be (a lone
    surrogate from a YAML ``"\\ud800"`` escape) is refused here, never left to raise in a
    worker's control follower, which would exit on it and again on every restart."""
    try:
        policy.version  # noqa: B018 - computed (and cached) for its error
    except (TypeError, ValueError) as exc:
        raise PolicyError(
            [
                f"<policy>: cannot be hashed for its version ({exc}); expected text that is valid "
                "UTF-8 (no \\ud800-\\udfff escapes) and numbers within 64 bits"
            ],
            _encodable(source),
        ) from None
    return policy


def _encodable(text: str) -> str:
    """``text`` printable on a UTF-8 stream: lone surrogates shown as ``\\udXXX`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` over ``base``, mapping by mapping: a tenant that sets approval.ttl_seconds
    keeps the default approvers, one that sets tools.allow keeps the default block list.
    Lists and scalars are replaced whole."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _sets(override: Any, path: tuple[Any, ...]) -> bool:
    """True when the tenant's own ``override`` contains the key path (so an error there is its)."""
    for part in path:
        if not isinstance(override, dict):
            return True  # inside a list or value that the tenant set whole
        if part not in override:
            return False
        override = override[part]
    return True


def load_policy(path: str | Path | None) -> Policy:
    """The policy in ``path``, or the seed policy when ``path`` is None."""
    if path is None:
        return parse_policy(DEFAULT_POLICY_YAML, "seed policy")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([f"cannot read policy file: {exc.strerror}"], str(p)) from None
    return parse_policy(text, str(p))
