"""Names in the policy: keys and globs fold like the events' names; no spelling escapes a rule."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baton.processors.engine import request_digest
from baton.schemas.decision import Outcome, Reason
from baton.schemas.errors import PolicyError
from baton.schemas.events import ApprovalGranted
from baton.schemas.names import fold
from baton.schemas.policy import parse_policy
from baton.schemas.signing import approval_payload, new_private_key, public_key_text, sign
from tests.unit.test_engine_support import Run, at

pytestmark = pytest.mark.unit

KEY = public_key_text(new_private_key())  # a real key: 32 zero bytes are of small order


def _problems(text: str) -> str:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p")
    return str(info.value)


def _spellings(name: str) -> st.SearchStrategy[str]:
    """``name`` with each letter in either case, some in their fullwidth form."""

    def one(ch: str) -> st.SearchStrategy[str]:
        if not ch.isalpha():
            return st.just(ch)
        return st.sampled_from([ch.lower(), ch.upper(), chr(ord(ch.lower()) - 0x61 + 0xFF41)])

    return st.tuples(*(one(ch) for ch in name)).map("".join)


# ------------------------------------------------------------------ tool lists


@settings(max_examples=60, deadline=None)
@given(_spellings("billing.refund.create"))
def test_no_spelling_of_a_blocked_tool_passes_the_block_list(tool: str) -> None:
    run = Run(parse_policy("multi_agent: {tools: {block: [billing.refund.create]}}"))
    decided = run.handoff("t1", "planner", "billing_agent", tool=tool)
    assert (decided.outcome, decided.reason) == (Outcome.STOP, Reason.TOOL_NOT_PERMITTED)


def test_a_block_list_written_in_capitals_blocks_the_tool_in_any_case() -> None:
    run = Run(parse_policy("multi_agent: {tools: {block: [Billing.Refund.*]}}"))
    for task, tool in (("t1", "billing.refund.create"), ("t2", "BILLING.REFUND.create")):
        assert run.handoff(task, "planner", "b", tool=tool).reason == Reason.TOOL_NOT_PERMITTED


def test_a_role_tool_list_and_a_role_key_in_another_case_still_apply() -> None:
    policy = parse_policy("multi_agent: {roles: {Billing_Agent: {tools: {allow: [Billing.*]}}}}")
    assert list(policy.multi_agent.roles) == ["billing_agent"]
    run = Run(policy)
    assert run.handoff("t1", "planner", "BILLING_AGENT", tool="shell.exec").reason == (
        Reason.TOOL_NOT_PERMITTED
    )
    assert run.handoff("t2", "planner", "billing_agent", tool="BILLING.read").outcome == (
        Outcome.ALLOW
    )


def test_an_approval_gated_action_in_another_case_still_needs_approval() -> None:
    run = Run(parse_policy("multi_agent: {require_approval_for: [billing.refund.create]}"))
    decided = run.handoff("t1", "planner", "billing_agent", action="Billing.Refund.Create")
    assert decided.outcome == Outcome.APPROVAL_REQUIRED


# ------------------------------------------------------------------ agents


@settings(max_examples=40, deadline=None)
@given(_spellings("triage"), _spellings("billing"))
def test_ping_pong_under_other_spellings_is_one_pair_for_max_bounces(a: str, b: str) -> None:
    run = Run(parse_policy("multi_agent: {max_bounces: 1, max_handoffs: null}"))
    assert run.handoff("t1", "triage", "billing").outcome == Outcome.ALLOW
    assert run.handoff("t2", b, a).outcome == Outcome.ALLOW  # bounce 1
    assert run.handoff("t3", a, b).reason == Reason.DELEGATION_CYCLE


def test_a_role_in_another_case_is_the_agents_role() -> None:
    run = Run(parse_policy("multi_agent: {roles: {Researcher: {may_delegate_to: [writer]}}}"))
    refused = run.handoff("t1", "RESEARCHER", "billing_agent")
    assert (refused.outcome, refused.reason) == (Outcome.STOP, Reason.ROLE_NOT_PERMITTED)
    assert run.handoff("t2", "researcher", "Writer").outcome == Outcome.ALLOW


def test_may_own_globs_fold_and_match_a_task_id_standing_in_for_its_kind() -> None:
    run = Run(parse_policy("multi_agent: {roles: {billing_agent: {may_own: [Refund_*]}}}"))
    assert run.handoff("REFUND_7", "planner", "billing_agent").outcome == Outcome.ALLOW
    assert run.handoff("t2", "planner", "billing_agent", task_kind="refund_x").outcome == (
        Outcome.ALLOW
    )
    assert run.handoff("ship_1", "planner", "billing_agent").reason == Reason.ROLE_NOT_PERMITTED


def test_strict_roles_stops_an_agent_the_roles_do_not_list() -> None:
    roles = "{planner: {}, researcher: {tools: {block: [shell.*]}}}"
    policy = parse_policy(f"multi_agent: {{strict_roles: true, roles: {roles}}}")
    run = Run(policy)
    assert run.handoff("t1", "planner", "Researcher").outcome == Outcome.ALLOW
    stranger = run.handoff("t2", "planner", "researcher2", tool="shell.exec")
    assert (stranger.outcome, stranger.reason) == (Outcome.STOP, Reason.ROLE_NOT_PERMITTED)
    assert "researcher2 is not under roles (strict_roles is on)" in (stranger.detail or "")
    assert run.handoff("t3", "outsider", "researcher").reason == Reason.ROLE_NOT_PERMITTED


def test_strict_roles_without_roles_is_refused_not_silently_open() -> None:
    said = _problems("multi_agent: {strict_roles: true}")
    assert "strict_roles: true needs at least one agent under roles" in said
    # a tenant that turns it on over a policy with no roles is refused the same way
    said = _problems("tenants: {acme: {strict_roles: true}}")
    assert "tenants.acme: strict_roles: true needs at least one agent" in said


def test_strict_roles_off_keeps_the_policy_version() -> None:
    text = "multi_agent: {roles: {a: {}}}"
    on = parse_policy(text.replace("{roles", "{strict_roles: false, roles"))
    assert parse_policy(text).version == on.version


def test_the_requesting_agent_in_another_case_cannot_approve_its_own_handoff() -> None:
    run = Run()
    decided = run.handoff(
        "refund_create", "planner", "billing_agent", action="billing.refund.create"
    )
    assert decided.approval_id is not None
    for who in ("Planner", "PLANNER", "BILLING_agent"):
        [refused] = run.grant(decided.approval_id, who, t=5)
        assert refused.reason in (Reason.SELF_APPROVAL, Reason.BENEFICIARY_APPROVAL), who
    assert run.state is not None and decided.approval_id in run.state.pending


def test_approver_globs_fold() -> None:
    text = "multi_agent: {require_approval_for: [refund], approval: {approvers: [Finance_*]}}"
    run = Run(parse_policy(text))
    decided = run.handoff("t1", "planner", "billing_agent", action="Refund")
    assert decided.approval_id is not None
    [allowed] = run.grant(decided.approval_id, "FINANCE_lead", t=5)
    assert (allowed.outcome, allowed.approver) == (Outcome.ALLOW, "finance_lead")


# ------------------------------------------------------------------ what a policy may say


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "multi_agent: {roles: {researcher: {}, Researcher: {}}}",
            'roles: agent names "researcher" and "Researcher" are one name once folded',
        ),
        (
            "multi_agent: {roles: {researcher: {}, \uff52esearcher: {}}}",
            "are one name once folded",
        ),
        ("tenants: {acme: {}, ACME: {}}", 'tenant names "acme" and "ACME" are one name'),
        (
            f'operators: {{oncall: "{KEY}", OnCall: "{KEY}"}}',
            'signer names "oncall" and "OnCall" are one name',
        ),
        (
            f'multi_agent: {{approval: {{keys: {{lead: "{KEY}", LEAD: "{KEY}"}}}}}}',
            "multi_agent.approval.keys",
        ),
    ],
)
def test_two_keys_that_fold_to_one_name_are_refused_naming_both(text: str, said: str) -> None:
    assert said in _problems(text)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('multi_agent: {roles: {"researcher ": {}}}', "U+0020 SPACE"),
        ('multi_agent: {roles: {"res\\u200bearcher": {}}}', "U+200B ZERO WIDTH SPACE"),
        ('multi_agent: {roles: {"r\\u0435searcher": {}}}', "mixes the scripts Cyrl, Latn"),
        ('tenants: {"acme ": {}}', "U+0020 SPACE"),
        ('multi_agent: {tools: {block: ["billing.refund.create "]}}', "can match no name"),
        ('multi_agent: {require_approval_for: ["billing.\\u200brefund"]}', "can match no name"),
        ('multi_agent: {release_ownership_on: ["error "]}', "bad name"),
        ('multi_agent: {roles: {"billing_agent\\u034f": {}}}', "U+034F COMBINING GRAPHEME JOINER"),
        ('multi_agent: {roles: {"\\u0301": {}}}', "no letter or digit"),
        ('tenants: {"acme\\u3164": {}}', "U+3164 HANGUL FILLER"),
        ('multi_agent: {tools: {block: ["shell\\ufe0f.*"]}}', "can match no name"),
        ('multi_agent: {require_approval_for: ["billing\\u0660*"]}', "mixes the scripts"),
    ],
)
def test_a_policy_name_or_glob_no_event_could_carry_is_refused(text: str, said: str) -> None:
    # a block list entry with a stray space would block nothing: refused at load, named
    assert said in _problems(text)


def test_every_name_a_policy_holds_is_in_its_folded_form() -> None:
    policy = parse_policy(
        f"""
multi_agent:
  roles: {{Planner: {{may_delegate_to: [Writer], may_own: [Plan_*], tools: {{allow: [Web.*]}}}}}}
  tools: {{allow: [CRM.*], block: [Shell.*]}}
  require_approval_for: [Billing.Refund.Create]
  approval: {{approvers: [Finance_*], keys: {{Finance_Lead: "{KEY}"}}}}
  release_ownership_on: [Error]
tenants: {{ACME: {{max_handoffs: 3}}}}
operators: {{OnCall: "{KEY}"}}
"""
    )
    limits = policy.multi_agent
    role = limits.roles["planner"]
    assert role.may_delegate_to == ["writer"] and role.may_own == ["plan_*"]
    assert role.tools is not None and role.tools.allow == ["web.*"]
    assert (limits.tools.allow, limits.tools.block) == (["crm.*"], ["shell.*"])
    assert limits.require_approval_for == ["billing.refund.create"]
    assert limits.approval.approvers == ["finance_*"]
    assert list(limits.approval.keys) == ["finance_lead"]
    assert limits.release_ownership_on == ["error"]
    assert list(policy.tenants) == ["acme"] and policy.tenants["acme"].max_handoffs == 3
    assert list(policy.operators) == ["oncall"]
    assert fold("ACME") in policy.tenants


def test_a_tenant_in_another_case_gets_its_tenants_limits() -> None:
    policy = parse_policy("strict_tenants: true\ntenants: {Acme: {max_handoffs: 1}}")
    run = Run(policy, tenant="ACME")
    assert run.handoff("t1", "planner", "writer").outcome == Outcome.ALLOW
    assert run.handoff("t2", "planner", "writer").reason == Reason.HANDOFF_BUDGET_EXCEEDED


# ------------------------------------------------------------------ signed names


def test_a_grant_signed_under_another_spelling_of_the_listed_approver_counts() -> None:
    # the signer (SDK, `baton approve --as Finance_Lead`) and the worker fold the name alike
    finance, mallory = new_private_key(), new_private_key()
    run = Run(
        parse_policy(
            "multi_agent:\n  require_approval_for: [refund]\n  approval:\n    keys:\n"
            f'      Finance_Lead: "{public_key_text(finance)}"\n'
        )
    )
    request = run.handoff("t1", "planner", "billing_agent", action="refund")
    assert request.approval_id is not None
    digest = request_digest(run.last)

    def signed(approver: str, key: Any) -> ApprovalGranted:
        payload = approval_payload(
            request.approval_id or "", "run-1", digest, "grant", approver, at(5)
        )
        return ApprovalGranted(
            approval_id=request.approval_id or "",
            run_id="run-1",
            approver=approver,
            signature=sign(key, payload),
            request_digest=digest,
            event_time=at(5),
        )

    [forged] = run.send(signed("FINANCE_LEAD", mallory), 5)
    assert forged.reason == Reason.BAD_SIGNATURE  # the name folds; the key still must match
    [granted] = run.send(signed("FINANCE_LEAD", finance), 5)
    assert (granted.outcome, granted.approver) == (Outcome.ALLOW, "finance_lead")


def test_the_seed_blocks_tool_lists_fold_too() -> None:
    policy = parse_policy(
        "policy: {tool_allowlist: [CRM.*, Shell.*], tool_blocklist: [Shell.Exec]}\n"
        "writes: {require_approval: [Billing.*]}"
    )
    limits = policy.multi_agent
    assert (limits.tools.allow, limits.tools.block) == (["crm.*", "shell.*"], ["shell.exec"])
    assert limits.require_approval_for == ["billing.*"]
    run = Run(policy)
    assert run.handoff("t1", "p", "b", tool="SHELL.EXEC").reason == Reason.TOOL_NOT_PERMITTED


def test_keys_differing_by_an_invisible_mark_are_refused_as_a_bad_key_not_kept_as_two() -> None:
    problems = _problems(
        'multi_agent: {roles: {billing_agent: {}, "billing_agent\\u034f": {tools: {allow: []}}}}'
    )
    assert "U+034F COMBINING GRAPHEME JOINER" in problems


def test_a_glob_of_symbols_only_is_still_a_glob() -> None:
    # "a letter or digit at least" is a rule of names: "*" matches every name
    policy = parse_policy("multi_agent: {tools: {block: ['*']}}")
    assert Run(policy).handoff("t1", "a", "b", tool="crm.read").reason == Reason.TOOL_NOT_PERMITTED
