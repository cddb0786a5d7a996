"""docs/policy.md, generated from the policy model: every key, its type, default and meaning.

    python -m baton.schemas.policy_doc > docs/policy.md

The meanings are the models' Field descriptions; the reasons table is ``REASONS`` below,
which must name every :class:`~baton.schemas.decision.Reason`
(tests/unit/test_policy_doc.py checks both, and that docs/policy.md is this text).
"""

from __future__ import annotations

import enum
import sys
import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from baton.schemas.decision import Reason
from baton.schemas.policy import DEFAULT_POLICY_YAML, MultiAgentPolicy, Policy
from baton.schemas.policy_types import MAX_LIMIT

__all__ = ["REASONS", "UNDOCUMENTED", "render_policy_doc", "undocumented_fields"]

#: reason -> (outcome, the policy key or rule behind it, when it is given)
REASONS: dict[str, tuple[str, str, str]] = {
    Reason.OK: ("allow", "–", "every check passed; the task is locked to `to_agent`"),
    Reason.KILLED: (
        "stop",
        "kill switch",
        "a kill switch holds the run, its tenant or everything (`baton kill`)",
    ),
    Reason.RUN_FINISHED: ("stop", "–", "a handoff after the run's `run_finished`"),
    Reason.OWNERSHIP_CONFLICT: (
        "stop",
        "ownership lock",
        "the task already has an owner other than `to_agent`",
    ),
    Reason.ROLE_NOT_PERMITTED: (
        "stop",
        "`roles`",
        "`from_agent` may not delegate to `to_agent`, or `to_agent` may not own the task kind",
    ),
    Reason.AGENT_LIMIT_EXCEEDED: ("stop", "`max_agents_per_run`", "one agent too many"),
    Reason.HANDOFF_BUDGET_EXCEEDED: (
        "stop",
        "`max_handoffs`",
        "one handoff too many; the run stays stopped",
    ),
    Reason.DELEGATION_DEPTH_EXCEEDED: ("stop", "`max_delegation_depth`", "too deep"),
    Reason.DELEGATION_CYCLE: (
        "stop",
        "`detect_delegation_cycles`, `max_bounces`",
        "the task would go back to an agent already on its delegation chain, or two agents "
        "handed work back and forth more than `max_bounces` times",
    ),
    Reason.SHARED_BUDGET_EXCEEDED: (
        "stop",
        "`shared_max_usd`, `shared_max_tool_calls`, `max_run_seconds`",
        "the run's shared budget (spent + reserved + this estimate) is over a limit, before "
        "a handoff or after a completion; the run stays stopped",
    ),
    Reason.STEP_BUDGET_EXCEEDED: (
        "stop",
        "`max_steps`",
        "the run's reported steps went over `max_steps` (after a completion), or reached it "
        "(before a handoff); the run stays stopped",
    ),
    Reason.TOOL_NOT_PERMITTED: (
        "stop",
        "`tools`, `roles.<agent>.tools`",
        "a tool the handoff names (`tool`, `tools`) is blocked or not allowed for the agent "
        "receiving it; or a completion reports one its agent may not use (the run stays "
        "stopped)",
    ),
    Reason.APPROVAL_DENIED: ("stop", "`require_approval_for`", "an approver denied it"),
    Reason.APPROVAL_EXPIRED: (
        "stop",
        "`approval.ttl_seconds`",
        "no answer before the approval expired, or a grant after it",
    ),
    Reason.REQUEST_ID_REUSED: (
        "stop",
        "worker",
        "the request_id was already used in this run for a different request",
    ),
    Reason.RUN_STATE_LIMIT: (
        "stop",
        "worker (`BATON_RUN_STATE_MAX_BYTES`)",
        "the run's state would outgrow its byte limit; the run is stopped",
    ),
    Reason.WORKER_RUN_LIMIT: (
        "stop",
        "worker",
        "the worker holds as many runs (or state bytes) as it may; new runs are stopped",
    ),
    Reason.RUN_EXPIRED: (
        "stop",
        "worker",
        "the run was idle past the worker's run retention and its task tree was evicted",
    ),
    Reason.TENANT_MISMATCH: ("stop", "worker", "the event names another tenant than the run's"),
    Reason.REPLY_NOT_KEPT: (
        "stop",
        "worker",
        "a repeat of a request decided so long ago that its decision is no longer kept",
    ),
    Reason.REQUEST_EXPIRED: (
        "stop",
        "worker",
        "read after the request's `decide_by`: the client had already given up",
    ),
    Reason.AUDIT_UNVERIFIED: (
        "stop",
        "`baton up` restart",
        "the run's recorded history did not replay as recorded when `baton up` restored it "
        "(forged or altered audit rows, another `BATON_AUDIT_CHAIN_KEY`, another Baton "
        "version); the run is stopped for good",
    ),
    Reason.APPROVAL_UNSIGNED: (
        "recorded",
        "`approval.keys`",
        "an unsigned answer while the policy lists approver keys",
    ),
    Reason.BAD_SIGNATURE: ("recorded", "`approval.keys`, `operators`", "the signature is wrong"),
    Reason.UNKNOWN_APPROVER: (
        "recorded",
        "`approval.keys`",
        "the approver has no key in the policy",
    ),
    Reason.SIGNED_FOR_ANOTHER_REQUEST: (
        "recorded",
        "`approval.keys`",
        "the signature covers another request (digest, run or approval id)",
    ),
    Reason.SIGNATURE_EXPIRED: (
        "recorded",
        "`approval.max_signature_age_seconds`",
        "the signature is older than allowed",
    ),
    Reason.BENEFICIARY_APPROVAL: (
        "recorded",
        "`approval`",
        "the approver is the agent that would receive the handoff",
    ),
    Reason.UNKNOWN_TENANT: (
        "stop",
        "`strict_tenants`",
        "the run's tenant is not under `tenants`",
    ),
    Reason.CONTROL_UNSIGNED: (
        "recorded",
        "`operators`",
        "an unsigned kill switch, release or policy update while the policy lists operators",
    ),
    Reason.UNKNOWN_OPERATOR: ("recorded", "`operators`", "the operator has no key in the policy"),
    Reason.CONTROL_REPLAYED: (
        "recorded",
        "`operators`",
        "a signed control command seen before (a replay)",
    ),
    Reason.APPROVAL_PENDING: (
        "approval_required",
        "`require_approval_for`",
        "the action or tool needs a grant; the decision carries `approval_id` and expiry",
    ),
    Reason.APPROVAL_GRANTED: ("allow", "`approval`", "an approver granted it in time"),
    Reason.WITHIN_BUDGET: (
        "recorded",
        "shared budget",
        "a completion reported within the shared budget",
    ),
    Reason.OWNERSHIP_RELEASED: (
        "recorded",
        "`release_ownership_on`",
        "the task's owner reported a failure status; the task is free for another agent",
    ),
    Reason.RESERVATION_EXPIRED: (
        "recorded",
        "`reservation_ttl_seconds`",
        "an estimate reserved at allow time was released: no completion within the TTL",
    ),
    Reason.SELF_APPROVAL: (
        "recorded",
        "`approval.allow_self_approval`",
        "the approver is the agent that asked for the handoff",
    ),
    Reason.APPROVER_NOT_PERMITTED: (
        "recorded",
        "`approval.approvers`",
        "the approver matches none of the approver globs",
    ),
    Reason.UNKNOWN_APPROVAL: ("recorded", "–", "an answer to no pending approval"),
    Reason.KILL_SWITCH: ("recorded", "kill switch", "a kill switch was applied"),
    Reason.KILL_SWITCH_RELEASED: ("recorded", "kill switch", "a kill switch was lifted"),
    Reason.POLICY_UPDATED: ("recorded", "`operators`", "a policy update was applied"),
    # keyed by its value: the Reason member is being added in the same session (replay)
    "policy_in_force": (
        "recorded",
        "the policy",
        "a worker's policy document, recorded when it starts using it (replay reads it back)",
    ),
    Reason.GOVERNANCE_UNAVAILABLE: (
        "stop (client)",
        "SDK timeout",
        "no decision within the client's timeout (made by the client, never in the audit)",
    ),
}

#: the "when" of a reason missing from REASONS (the test fails on it)
UNDOCUMENTED = "(not documented: add it to REASONS in baton/schemas/policy_doc.py)"

_INTRO = """\
# Policy reference

<!-- Generated from baton.schemas.policy by `python -m baton.schemas.policy_doc > docs/policy.md`.
Do not edit: change the model's Field descriptions and regenerate
(tests/unit/test_policy_doc.py fails until you do). -->

A policy is one YAML file: `baton worker --policy FILE` (or `BATON_POLICY`); `baton up --policy
FILE`; `baton policy check FILE` validates it and names the bad key, value and expectation;
`baton policy publish FILE` sends it to every worker, signed. Every key is optional, an unknown
key is an error, and `null` for a `max_*` key means no limit (an integer limit is at most
2^53 = 9007199254740992; `yes`/`no`/`on`/`off` are booleans in YAML, never numbers). Without a
file Baton enforces the seed policy:

```yaml
{seed}```

Every decision carries `policy_version`, a hash of the whole policy in force.
[`policy.example.yaml`](../policy.example.yaml) shows the keys a deployment usually adds.
"""


def render_policy_doc() -> str:
    """The whole of docs/policy.md."""
    parts = [_INTRO.format(seed=DEFAULT_POLICY_YAML.split("\n", 1)[1])]
    parts.append(_section("Top level", "", Policy))
    for path, model in sections():
        parts.append(_section(f"`{path}`", path, model))
    parts.append(
        "Under `tenants.<name>` every key of `multi_agent` may be set again for that tenant;\n"
        "what a tenant does not set it inherits from `multi_agent` (mapping by mapping).\n"
    )
    parts.append(_reasons())
    return "\n".join(parts)


def sections() -> list[tuple[str, type[BaseModel]]]:
    """Every mapping of the policy below the top level, by key path: each model once (a
    tenant's block is `multi_agent` again), `multi_agent` and its mappings first."""
    found = _nested(MultiAgentPolicy, "multi_agent")
    for name, info in Policy.model_fields.items():
        for sub, suffix in _submodels(info.annotation):
            if sub is not MultiAgentPolicy:
                found += _nested(sub, f"{name}{suffix}")
    return found


def _nested(model: type[BaseModel], path: str) -> list[tuple[str, type[BaseModel]]]:
    """``model`` at ``path`` and every model reachable from its fields, depth first."""
    found = [(path, model)]
    for name, info in model.model_fields.items():
        for sub, suffix in _submodels(info.annotation):
            found += _nested(sub, f"{path}.{name}{suffix}")
    return found


def _submodels(annotation: Any) -> list[tuple[type[BaseModel], str]]:
    """Models a field holds: itself (suffix ""), or as the values of a mapping (".<name>")."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, "")]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is dict:
        return [(m, f".<{_key_noun(args[0])}>{s}") for m, s in _submodels(args[1])]
    if origin in (Union, types.UnionType):
        return [found for arg in args for found in _submodels(arg)]
    return []


def _key_noun(annotation: Any) -> str:
    return "reason" if annotation is Reason else "name"


def _section(title: str, path: str, model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip().splitlines()[0].replace("``", "`") if model.__doc__ else ""
    lines = [f"## {title}", ""]
    if doc:
        lines += [doc, ""]
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        key = f"{path}.{name}" if path else name
        lines.append(
            f"| `{key}` | {_type(info.annotation, info)} | {_default(info)} | "
            f"{_cell(info.description or '')} |"
        )
    return "\n".join(lines) + "\n"


def _type(annotation: Any, info: FieldInfo | None = None) -> str:
    """A reader's name for a field's type: "integer ≥ 0 or null", "list of strings" ..."""
    text = _type_name(annotation)
    if info is not None:
        text = _with_bounds(text, info.metadata)
    return text


def _type_name(annotation: Any) -> str:
    if annotation is None or annotation is type(None):
        return "null"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _with_bounds(_type_name(args[0]), annotation.__metadata__)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {_plural(_type_name(args[0]))}"
    if origin is dict:
        return f"mapping {_type_name(args[0])} → {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, Reason):
        return "reason"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(f"`{m.value}`" for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _with_bounds(text: str, metadata: Any) -> str:
    """``text`` with the bounds found in ``metadata`` (annotated-types objects, or a Field of
    an ``Annotated`` alias that holds them)."""
    for meta in metadata or ():
        if isinstance(meta, FieldInfo):
            text = _with_bounds(text, meta.metadata)
            continue
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            bound = getattr(meta, attr, None)
            if bound is not None and not (attr == "le" and bound == MAX_LIMIT):  # in the intro
                shown = str(bound) if isinstance(bound, int) else f"{bound:g}"
                text = f"{text}{',' if attr in ('le', 'lt') else ''} {sign} {shown}"
        for attr, what in (("min_length", "at least"), ("max_length", "at most")):
            length = getattr(meta, attr, None)
            if length is not None and text == "string":
                text = (
                    "non-empty string"
                    if (attr, length) == ("min_length", 1)
                    else f"string of {what} {length} characters"
                )
    return text


def _plural(noun: str) -> str:
    return noun + "s" if noun.endswith(("string", "integer", "number")) else noun


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _reasons() -> str:
    lines = [
        "## Reasons",
        "",
        "Every decision has a `reason`. Pre-handoff checks run in this order, and the first",
        "that fails gives the decision: kill switch, finished or stopped run, ownership and",
        "roles, agents, handoffs, depth and cycles, shared budget, tools, approval gate.",
        "A stop carries `fallback` (`fallback`, or `fallback_by_reason` for its reason);",
        "`recorded` is a record that neither allows nor stops (a refused answer or command",
        "changes nothing).",
        "",
        "| reason | outcome | from | when |",
        "|---|---|---|---|",
    ]
    for reason in Reason:
        outcome, source, when = REASONS.get(reason, ("?", "?", UNDOCUMENTED))
        lines.append(f"| `{reason.value}` | {outcome} | {_cell(source)} | {_cell(when)} |")
    return "\n".join(lines) + "\n"


def undocumented_fields() -> list[str]:
    """Policy keys without a Field description (each needs one for the reference)."""
    missing = [f"{n}" for n, i in Policy.model_fields.items() if not i.description]
    for path, model in sections():
        missing += [f"{path}.{n}" for n, i in model.model_fields.items() if not i.description]
    return missing


def main() -> None:
    sys.stdout.write(render_policy_doc())


if __name__ == "__main__":
    main()
