"""The reasons table of docs/policy.md: every decision reason, its outcome, source and when.

``REASONS`` must name every :class:`~baton.schemas.decision.Reason`
(tests/unit/test_policy_doc.py checks it); ``baton.schemas.policy_doc`` renders the rest.
"""

from __future__ import annotations

from baton.schemas.decision import Reason

__all__ = ["REASONS", "UNDOCUMENTED", "cell", "render_reasons"]

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
    Reason.LINEAGE_REQUIRED: (
        "stop",
        "`require_lineage`",
        "`from_agent` is not the run's first agent and the handoff names no `parent_task_id` "
        "that `from_agent` owns",
    ),
    Reason.DELEGATION_DEPTH_EXCEEDED: ("stop", "`max_delegation_depth`", "too deep"),
    Reason.DELEGATION_CYCLE: (
        "stop",
        "`detect_delegation_cycles`, `max_bounces`",
        "the task would go back to an agent already on its delegation chain, or two agents "
        "handed work back and forth (or three round a loop) more than `max_bounces` times",
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
        "`tools`, `roles.<agent>.tools`, `require_approval_for`",
        "a tool the handoff names (`tool`, `tools`) is blocked or not allowed for the agent "
        "receiving it; or a completion reports one its agent may not use, or one "
        "`require_approval_for` matches that its handoff was not granted (the run stays "
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
        "`approval.max_signature_age_seconds`, `operators`",
        "the signature is older than allowed, or signed more than 60 s ahead of the worker's "
        "clock (a grant, or an operator's command)",
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
UNDOCUMENTED = "(not documented: add it to REASONS in baton/schemas/policy_reasons_doc.py)"


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_reasons() -> str:
    """The ``## Reasons`` section: one row per reason, in the enum's order."""
    lines = [
        "## Reasons",
        "",
        "Every decision has a `reason`. Pre-handoff checks run in this order, and the first",
        "that fails gives the decision: kill switch, finished or stopped run, ownership and",
        "roles, agents, handoffs, lineage, depth and cycles, shared budget, tools, approval",
        "gate.",
        "A stop carries `fallback` (`fallback`, or `fallback_by_reason` for its reason);",
        "`recorded` is a record that neither allows nor stops (a refused answer or command",
        "changes nothing).",
        "",
        "| reason | outcome | from | when |",
        "|---|---|---|---|",
    ]
    for reason in Reason:
        outcome, source, when = REASONS.get(reason, ("?", "?", UNDOCUMENTED))
        lines.append(f"| `{reason.value}` | {outcome} | {cell(source)} | {cell(when)} |")
    return "\n".join(lines) + "\n"
