"""Session 3 attack review (H9) of the name rule and the per-handoff grant record.

Each test is one attack. Those marked xfail(strict=True) broke through: the reason says what
gets through and what should happen instead. The others pin an attack that held.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import pytest
from pydantic import ValidationError

from baton.processors.dedup_keys import request_digest
from baton.processors.state import RunState
from baton.schemas.decision import Decision, Outcome, Reason
from baton.schemas.events import ApprovalGranted, EventError, parse_event
from baton.schemas.names import fold_keys, normal_name
from baton.schemas.policy import parse_policy
from baton.schemas.signing import approval_payload, new_private_key, public_key_text, sign
from tests.unit.test_engine_support import Run, at, completed, finished, handoff, policy_with

pytestmark = pytest.mark.unit

# ============================================================================ 1. the name rule

#: printable code points that render as nothing (or as a blank) and fold to themselves:
#: each makes a name that looks exactly like the plain one and is another name
INVISIBLE = {
    "combining grapheme joiner U+034F": "\u034f",
    "variation selector-16 U+FE0F": "\ufe0f",
    "variation selector-1 U+FE00": "\ufe00",
    "variation selector-17 U+E0100": "\U000e0100",
    "Mongolian free variation selector U+180B": "\u180b",
    "Mongolian free variation selector four U+180F": "\u180f",
    "Khmer vowel inherent AQ U+17B4": "\u17b4",
    "Hangul filler U+3164": "\u3164",
    "Hangul choseong filler U+115F": "\u115f",
    "halfwidth Hangul filler U+FFA0": "\uffa0",
    "Braille pattern blank U+2800": "\u2800",
}

#: invisible code points the rule already refuses
REFUSED_INVISIBLE = {
    "zero width space U+200B": "\u200b",
    "Mongolian vowel separator U+180E": "\u180e",
    "soft hyphen U+00AD": "\u00ad",
    "tag latin capital A U+E0041": "\U000e0041",
    "invisible times U+2062": "\u2062",
    "ideographic space U+3000": "\u3000",
    "right-to-left override U+202E": "\u202e",
}


@pytest.mark.parametrize("mark", list(INVISIBLE.values()), ids=list(INVISIBLE))
def test_an_invisible_printable_character_inside_a_name_is_refused(mark: str) -> None:
    with pytest.raises(ValueError, match="bad name"):
        normal_name(f"she{mark}ll.exec")


@pytest.mark.parametrize("mark", list(REFUSED_INVISIBLE.values()), ids=list(REFUSED_INVISIBLE))
def test_known_invisible_characters_are_refused(mark: str) -> None:
    with pytest.raises(ValueError, match="bad name"):
        normal_name(f"she{mark}ll.exec")


CGJ = "\u034f"  # the combining grapheme joiner: one representative of INVISIBLE


def test_an_invisible_mark_in_a_tool_does_not_escape_the_approval_gate() -> None:
    run = Run(parse_policy("multi_agent: {require_approval_for: ['billing.*']}"))
    with pytest.raises(ValueError, match="bad name"):  # refused (H10): never decided
        run.handoff("t1", "planner", "billing_agent", tool=f"bill{CGJ}ing.refund")


def test_an_invisible_mark_in_a_reported_tool_does_not_escape_the_grant_record() -> None:
    run = Run(parse_policy("multi_agent: {require_approval_for: ['billing.*']}"))
    allowed = run.handoff("t1", "planner", "billing_agent")
    with pytest.raises(ValueError, match="bad name"):  # refused (H10): never decided
        completed(allowed.request_id, "t1", "billing_agent", tools=[f"bill{CGJ}ing.refund"])


def test_an_invisible_mark_in_a_tool_does_not_escape_the_block_list() -> None:
    run = Run(parse_policy("multi_agent: {tools: {block: ['shell.*']}}"))
    with pytest.raises(ValueError, match="bad name"):  # refused (H10): never decided
        run.handoff("t1", "a", "b", tool=f"she{CGJ}ll.exec")


def test_an_invisible_mark_in_the_approver_does_not_pass_self_approval() -> None:
    run = Run(parse_policy("multi_agent: {require_approval_for: ['billing.*']}"))
    asked = run.handoff("t1", "planner", "billing_agent", tool="billing.refund")
    assert asked.approval_id is not None
    with pytest.raises(ValueError, match="bad name"):  # refused (H10): never decided
        run.grant(asked.approval_id, "planner\ufe0f")


def test_a_hangul_filler_in_an_agent_name_does_not_escape_its_role() -> None:
    run = Run(parse_policy("multi_agent: {roles: {billing_agent: {tools: {allow: [billing.*]}}}}"))
    with pytest.raises(ValueError, match="bad name"):  # refused (H10): never decided
        run.handoff("t1", "planner", "billing_agent\u3164", tool="shell.exec")


@pytest.mark.parametrize("agent", ["billing_agent", "BILLING_AGENT", "\uff42illing_agent"])
def test_a_role_applies_to_every_spelling_folding_alike(agent: str) -> None:
    run = Run(parse_policy("multi_agent: {roles: {billing_agent: {tools: {allow: [billing.*]}}}}"))
    assert run.handoff("t1", "planner", agent, tool="shell.exec").reason == (
        Reason.TOOL_NOT_PERMITTED
    )


def test_tenant_limits_apply_to_a_folding_alike_tenant() -> None:
    run = Run(parse_policy("tenants: {acme: {max_handoffs: 1}}"), tenant="\uff21CME")
    run.handoff("t1", "planner", "writer")
    assert run.handoff("t2", "planner", "writer").reason == Reason.HANDOFF_BUDGET_EXCEEDED


def test_strict_roles_stops_an_invisible_variant_of_a_listed_agent() -> None:
    policy = parse_policy(
        "multi_agent: {strict_roles: true, roles: {billing_agent: {tools: {allow: [billing.*]}},"
        " planner: {}}}"
    )
    # the name rule refuses the variant before any rule sees it (H10): never decided
    with pytest.raises(ValueError, match="bad name"):
        Run(policy).handoff("t1", "planner", f"billing_agent{CGJ}", tool="shell.exec")


def _bounced(giver: str) -> Decision:
    """a -> b, b -> a, then ``giver`` -> b under max_bounces 1: the third handoff's decision."""
    run = Run(policy_with(max_bounces=1, max_agents_per_run=None, max_handoffs=None))
    run.handoff("t1", "a", "b")
    run.handoff("t2", "b", "a")
    return run.handoff("t3", giver, "b")


@pytest.mark.parametrize("giver", ["a", "A", "\uff41"])
def test_a_folding_alike_variant_of_an_agent_is_the_same_bounce(giver: str) -> None:
    assert _bounced(giver).reason == Reason.DELEGATION_CYCLE


def test_an_invisible_variant_of_an_agent_does_not_reset_max_bounces() -> None:
    with pytest.raises(ValueError, match="bad name"):  # refused (H10): never decided
        _bounced("a\u2800")


def test_a_turkish_dotted_capital_i_folds_to_the_plain_name() -> None:
    assert normal_name("B\u0130LLING.REFUND") == "billing.refund"


@pytest.mark.parametrize(
    ("variant", "plain"),
    [
        ("Stra\u00dfe", "strasse"),  # German sharp s
        ("\ufb01le.read", "file.read"),  # ligature fi
        ("\uff33\uff28\uff25\uff2c\uff2c.exec", "shell.exec"),  # fullwidth
        ("\u212aelvin", "kelvin"),  # Kelvin sign
        ("caf\u00e9", "cafe\u0301"),  # precomposed vs combining acute
        ("\U0001d41b\U0001d422\U0001d425\U0001d425", "bill"),  # mathematical bold
        ("\u2170\u2171", "iii"),  # small roman numerals one, two
    ],
)
def test_folding_collisions_are_one_name(variant: str, plain: str) -> None:
    assert normal_name(variant) == normal_name(plain)


def test_a_fullwidth_variant_of_a_blocked_tool_is_blocked() -> None:
    run = Run(parse_policy("multi_agent: {tools: {block: ['shell.*']}}"))
    tool = "\uff53\uff48\uff45\uff4c\uff4c.exec"
    assert run.handoff("t1", "a", "b", tool=tool).reason == Reason.TOOL_NOT_PERMITTED


def test_a_kelvin_sign_approver_is_the_requester() -> None:
    run = Run(parse_policy("multi_agent: {require_approval_for: ['billing.*']}"))
    asked = run.handoff("t1", "kim", "billing_agent", tool="billing.refund")
    assert asked.approval_id is not None
    [answer] = run.grant(asked.approval_id, "\u212aim")
    assert answer.reason == Reason.SELF_APPROVAL


@pytest.mark.parametrize(
    "keys", [{"Stra\u00dfe": {}, "strasse": {}}, {"\u212aey": {}, "key": {}}, {"ﬁ": {}, "FI": {}}]
)
def test_policy_keys_folding_alike_are_refused(keys: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="one name once folded"):
        fold_keys(keys, "roles")


@pytest.mark.parametrize(
    "name",
    [
        "\u3300" * 100,  # one character, four after NFKC: 400 > 256
        "\ufdfa",  # folds to text with spaces
        "\u0430pple",  # Cyrillic a in a Latin name
        "x" * 60_000,
        "",
    ],
    ids=["longer-after-fold", "folds-to-spaces", "mixed-script", "60KB", "empty"],
)
def test_a_hostile_agent_name_is_a_dead_letter_with_a_bounded_message(name: str) -> None:
    raw = json.loads(handoff("r1", "t1", "planner", "b").to_json())
    raw["to_agent"] = name
    with pytest.raises(EventError) as caught:
        parse_event(json.dumps(raw).encode())
    assert caught.value.kind in {"bad_name", "out_of_range", "too_long", "schema"}
    assert len(str(caught.value)) < 2_000


def test_the_decision_records_the_folded_names() -> None:
    run = Run(parse_policy("multi_agent: {max_agents_per_run: 9}"), tenant="ACME")
    d = run.handoff("t1", "\uff30lanner", "Billing_Agent", action="Billing.Refund")
    assert (d.from_agent, d.to_agent, d.action, d.tenant) == (
        "planner",
        "billing_agent",
        "billing.refund",
        "acme",
    )


def test_an_invisible_mark_in_the_tenant_does_not_escape_its_limits() -> None:
    run = Run(parse_policy("tenants: {acme: {max_handoffs: 1}}"), tenant=f"acme{CGJ}")
    with pytest.raises(ValueError, match="bad name"):  # refused (H10): never decided
        run.handoff("t1", "planner", "writer")


def test_strict_tenants_stops_an_invisible_variant_of_a_listed_tenant() -> None:
    policy = parse_policy("strict_tenants: true\ntenants: {acme: {max_handoffs: 1}}")
    # the name rule refuses the variant before any rule sees it (H10): never decided
    with pytest.raises(ValueError, match="bad name"):
        Run(policy, tenant=f"acme{CGJ}").handoff("t1", "planner", "writer")


def _signed_grant(approval_id: str, digest: str, approver: str, key: Any) -> ApprovalGranted:
    payload = approval_payload(approval_id, "run-1", digest, "grant", approver, at(5))
    return ApprovalGranted(
        approval_id=approval_id,
        run_id="run-1",
        approver=approver,
        signature=sign(key, payload),
        request_digest=digest,
        event_time=at(5),
    )


def test_a_signature_over_one_approver_does_not_count_for_another_name() -> None:
    # the payload holds the folded approver: spellings of one name share a signature
    # (intended: they are one approver), any other name does not
    lead, ops = new_private_key(), new_private_key()
    run = Run(
        parse_policy(
            "multi_agent:\n  require_approval_for: [refund]\n  approval:\n    keys:\n"
            f'      finance_lead: "{public_key_text(lead)}"\n'
            f'      ops_lead: "{public_key_text(ops)}"\n'
        )
    )
    asked = run.handoff("t1", "planner", "billing_agent", action="refund")
    assert asked.approval_id is not None
    digest = request_digest(run.last)
    good = _signed_grant(asked.approval_id, digest, "Finance_Lead", lead)
    swapped = good.model_copy(update={"approver": "ops_lead"})
    [refused] = run.send(swapped, 5)
    assert refused.reason == Reason.BAD_SIGNATURE
    respelled = good.model_copy(update={"approver": normal_name("FINANCE_LEAD")})
    [counted] = run.send(respelled, 5)
    assert (counted.outcome, counted.approver) == (Outcome.ALLOW, "finance_lead")


@pytest.mark.parametrize("name", ["\u034f", "\u3164", "\u2800\u2800", "\ufe0f", "\u0301"])
def test_a_name_with_nothing_visible_is_a_dead_letter(name: str) -> None:
    raw = json.loads(handoff("r1", "t1", "planner", "b").to_json())
    raw["to_agent"] = name
    with pytest.raises(EventError, match="bad name"):
        parse_event(json.dumps(raw).encode())


def test_policy_keys_differing_by_an_invisible_mark_are_refused() -> None:
    with pytest.raises(ValueError):
        fold_keys({"billing_agent": {}, f"billing_agent{CGJ}": {}}, "roles")


@pytest.mark.parametrize("tool", ["billing\u0660refund", "billing\u06f0refund", "pr\u0b66c.kill"])
def test_a_digit_of_another_script_does_not_pass_for_latin(tool: str) -> None:
    with pytest.raises(ValueError, match="bad name"):
        normal_name(tool)


def test_a_self_approval_under_a_folding_alike_spelling_is_refused() -> None:
    run = Run(parse_policy("multi_agent: {require_approval_for: ['billing.*']}"))
    asked = run.handoff("t1", "strasse", "billing_agent", tool="billing.refund")
    assert asked.approval_id is not None
    for spelling in ("STRA\u00dfE", "\u017ftrasse", "\uff53trasse"):  # sharp s, long s, fullwidth
        [answer] = run.grant(asked.approval_id, spelling)
        assert answer.reason == Reason.SELF_APPROVAL
    [beneficiary] = run.grant(asked.approval_id, "Billing_Agent")
    assert beneficiary.reason == Reason.BENEFICIARY_APPROVAL


# ============================================================================ 2. grant record

GATED = "multi_agent: {require_approval_for: ['billing.*'], max_agents_per_run: 9}"


def _granted(run: Run, task: str = "t1", **fields: Any) -> Decision:
    asked = run.handoff(task, "planner", "billing_agent", **fields)
    assert asked.outcome == Outcome.APPROVAL_REQUIRED and asked.approval_id is not None
    (allowed,) = run.grant(asked.approval_id, "finance_lead")
    assert allowed.outcome == Outcome.ALLOW
    return allowed


def _report(run: Run, rid: str, *tools: str, task: str = "t1", agent: str = "billing_agent",
            **fields: Any) -> Decision:  # fmt: skip
    return run.one(completed(rid, task, agent, tools=list(tools), t=run.clock + 1, **fields))


def test_a_glob_gate_grant_covers_a_folded_spelling_of_the_declared_tool() -> None:
    run = Run(parse_policy(GATED))
    allowed = _granted(run, tool="billing.refund")
    assert _report(run, allowed.request_id, "BILLING.Refund").reason == Reason.WITHIN_BUDGET


def test_a_grant_for_one_tool_under_a_glob_does_not_cover_its_sibling() -> None:
    run = Run(parse_policy(GATED))
    allowed = _granted(run, tool="billing.refund")
    assert _report(run, allowed.request_id, "billing.void").reason == Reason.TOOL_NOT_PERMITTED


def test_a_report_without_tools_spends_the_grant_so_a_second_report_stops() -> None:
    run = Run(parse_policy(GATED))
    allowed = _granted(run, tool="billing.refund")
    assert _report(run, allowed.request_id).reason == Reason.WITHIN_BUDGET
    assert run.state is not None and run.state.grants[allowed.request_id][2] == ()  # spent
    later = _report(run, allowed.request_id, "billing.refund", cost_usd=0.1)
    assert (later.outcome, later.reason) == (Outcome.STOP, Reason.TOOL_NOT_PERMITTED)


def test_a_report_before_the_approval_stops_and_the_late_grant_does_not_reopen() -> None:
    run = Run(parse_policy(GATED))
    asked = run.handoff("t1", "planner", "billing_agent", tool="billing.refund")
    assert asked.approval_id is not None
    early = _report(run, asked.request_id, "billing.refund")
    assert (early.outcome, early.reason) == (Outcome.STOP, Reason.TOOL_NOT_PERMITTED)
    [late] = run.grant(asked.approval_id, "finance_lead")
    assert late.outcome != Outcome.ALLOW
    assert run.handoff("t2", "planner", "writer").outcome == Outcome.STOP


def test_a_report_of_the_tool_after_its_approval_was_denied_stops_the_run() -> None:
    # a denial stops that handoff only (the run goes on); using the denied tool anyway ends it
    run = Run(parse_policy(GATED))
    asked = run.handoff("t1", "planner", "billing_agent", tool="billing.refund")
    assert asked.approval_id is not None
    [no] = run.deny(asked.approval_id, "finance_lead")
    assert no.reason == Reason.APPROVAL_DENIED
    report = _report(run, asked.request_id, "billing.refund")
    assert (report.outcome, report.reason) == (Outcome.STOP, Reason.TOOL_NOT_PERMITTED)
    assert "was not granted" in (report.detail or "")
    assert run.handoff("t2", "planner", "writer").outcome == Outcome.STOP


def test_require_approval_true_gates_every_reported_tool_the_grant_did_not_declare() -> None:
    run = Run(
        parse_policy("writes: {require_approval: true}\nmulti_agent: {max_agents_per_run: 9}")
    )
    allowed = _granted(run, tool="crm.read")
    assert _report(run, allowed.request_id, "crm.read").reason == Reason.WITHIN_BUDGET
    other = _granted(run, "t2", tool="crm.read")
    assert _report(run, other.request_id, "crm.write", task="t2").reason == (
        Reason.TOOL_NOT_PERMITTED
    )


def test_a_report_naming_another_agent_does_not_spend_the_owners_grant() -> None:
    run = Run(parse_policy(GATED))
    allowed = _granted(run, tool="billing.refund")
    assert run.state is not None
    forged = run.one(completed(allowed.request_id, "t1", "mallory", t=1))  # no tools
    assert forged.outcome == Outcome.RECORDED
    assert allowed.request_id in run.state.grants  # the owner's report still counts
    assert _report(run, allowed.request_id, "billing.refund", cost_usd=0.2).reason == (
        Reason.WITHIN_BUDGET
    )


def test_an_ungranted_gated_tool_reported_after_the_run_finished_is_recorded_as_such() -> None:
    # nothing left to stop: the audit still holds the reason (gov.stops, and so the
    # alerter, does not see it)
    run = Run(parse_policy(GATED))
    allowed = run.handoff("t1", "planner", "billing_agent")
    run.send(finished(t=1))
    late = _report(run, allowed.request_id, "billing.refund")
    assert (late.outcome, late.reason) == (Outcome.RECORDED, Reason.TOOL_NOT_PERMITTED)


def test_a_redelivered_grant_does_not_give_a_second_use() -> None:
    run = Run(parse_policy(GATED))
    asked = run.handoff("t1", "planner", "billing_agent", tool="billing.refund")
    assert asked.approval_id is not None
    [first] = run.grant(asked.approval_id, "finance_lead")
    rid = first.request_id
    assert _report(run, rid, "billing.refund").reason == Reason.WITHIN_BUDGET
    assert run.grant(asked.approval_id, "finance_lead") == [first]  # redelivered: same answer
    assert run.state is not None and run.state.grants[rid][2] == ()  # spent: covers nothing
    again = _report(run, rid, "billing.refund", cost_usd=0.3)
    assert again.reason == Reason.TOOL_NOT_PERMITTED


def test_a_retried_report_stamped_anew_is_the_same_report() -> None:
    run = Run(parse_policy(GATED))
    allowed = _granted(run, tool="billing.refund")
    tools = ["billing.refund"]
    first = run.one(completed(allowed.request_id, "t1", "billing_agent", 1, tools=tools, t=2))
    retry = run.one(completed(allowed.request_id, "t1", "billing_agent", 1, tools=tools, t=9))
    assert retry == first and first.reason == Reason.WITHIN_BUDGET
    assert run.state is not None and run.state.spent_usd == 1 and run.state.stopped is None


def test_a_gated_tool_declared_only_in_the_tools_list_needs_the_approval() -> None:
    run = Run(parse_policy(GATED))
    tools = [f"search.t{i}" for i in range(63)] + ["BILLING.Refund"]
    asked = run.handoff("t1", "planner", "billing_agent", tools=tools)
    assert asked.outcome == Outcome.APPROVAL_REQUIRED


def test_a_state_round_trip_between_two_reports_keeps_one_use_and_idempotence() -> None:
    run = Run(parse_policy(GATED))
    allowed = _granted(run, tool="billing.refund")
    report = completed(
        allowed.request_id, "t1", "billing_agent", 1.5, tools=["billing.refund"], t=2
    )
    first = run.one(report)
    assert run.state is not None
    run.state = RunState.from_bytes(run.state.to_bytes())
    assert run.one(report) == first and run.state.spent_usd == 1.5
    run.state = RunState.from_bytes(run.state.to_bytes())
    assert run.one(report) == first and run.state.spent_usd == 1.5


def test_a_completion_redelivered_past_the_dedup_window_stops_the_run() -> None:
    # documented (guarantees.md: "a redelivery older than 512 later events ... would be
    # decided again"); with the grant record the late copy is now a stop, never an allow
    run = Run(policy_with(require_approval_for=["billing.*"], max_agents_per_run=None,
                          max_handoffs=None))  # fmt: skip
    allowed = _granted(run, tool="billing.refund")
    report = completed(allowed.request_id, "t1", "billing_agent", tools=["billing.refund"], t=1)
    assert run.one(report).reason == Reason.WITHIN_BUDGET
    for i in range(520):
        run.one(completed(f"noise-{i}", f"n{i}", "x", t=2))
    late = run.one(report)
    assert late.outcome != Outcome.ALLOW and late.reason == Reason.TOOL_NOT_PERMITTED


def _signed_replay(replay_at: float) -> tuple[Decision, Decision]:
    """One signed grant, its report, 600 filler events of the run (past the 512-key dedup
    window), then the request, the signed grant and the report again at ``replay_at``:
    the replayed grant's and report's decisions."""
    lead = new_private_key()
    run = Run(
        parse_policy(
            "multi_agent:\n  require_approval_for: [refund]\n  max_agents_per_run: null\n"
            "  max_handoffs: null\n  approval:\n    keys:\n"
            f'      finance_lead: "{public_key_text(lead)}"\n'
        )
    )
    asked = run.handoff("t1", "planner", "billing_agent", action="refund", tools=["refund"])
    assert asked.approval_id is not None
    request = run.last
    grant = _signed_grant(asked.approval_id, request_digest(request), "finance_lead", lead)
    assert run.send(grant, 5)[0].reason == Reason.APPROVAL_GRANTED
    report = completed(request.request_id, "t1", "billing_agent", 1.0, tools=["refund"], t=6)
    assert run.one(report, 6).reason == Reason.WITHIN_BUDGET
    for i in range(600):
        run.one(completed(f"filler-{i}", f"f{i}", "x", t=7), 7)
    run.send(request, replay_at)  # asked again: the same approval id, pending anew
    [again] = run.send(grant, replay_at)
    return again, run.one(report, replay_at + 1)


def test_a_signed_grant_replayed_a_minute_later_past_the_dedup_window_is_refused() -> None:
    again, report = _signed_replay(100)
    # the replayed request is refused (its id holds a spent grant), so nothing is pending
    assert again.reason == Reason.UNKNOWN_APPROVAL
    assert (report.outcome, report.reason) == (Outcome.STOP, Reason.TOOL_NOT_PERMITTED)


def test_a_signed_grant_replayed_within_the_clock_skew_past_the_dedup_window_is_refused() -> None:
    again, report = _signed_replay(20)
    assert again.outcome != Outcome.ALLOW
    assert report.reason == Reason.TOOL_NOT_PERMITTED


def test_overflowing_max_grants_evicts_the_oldest_whose_report_then_stops() -> None:
    run = Run(policy_with(require_approval_for=["billing.*"], max_agents_per_run=None,
                          max_handoffs=None))  # fmt: skip
    victim = _granted(run, "victim", tool="billing.refund")
    for i in range(256):
        _granted(run, f"t{i}", tool="billing.refund")
    assert run.state is not None and victim.request_id not in run.state.grants
    assert len(run.state.grants) == 256
    report = _report(run, victim.request_id, "billing.refund", task="victim")
    assert (report.outcome, report.reason) == (Outcome.STOP, Reason.TOOL_NOT_PERMITTED)


# ============================================================================ 3. numbers, lists


def _completion_with(**fields: Any) -> bytes:
    raw = json.loads(completed("r1", "t1", "b").to_json())
    raw.update(fields)
    return json.dumps(raw).encode()


@pytest.mark.parametrize("steps", [10**30, -1, 1e308, 2**63, 1_000_001, "5", 5.0, True], ids=repr)
def test_a_hostile_steps_count_is_a_dead_letter(steps: Any) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(_completion_with(steps=steps))
    assert "steps" in str(caught.value)


def test_a_steps_count_of_1e400_is_a_dead_letter() -> None:
    raw = _completion_with().replace(b'"steps": 0', b'"steps": 1e400')
    assert b"1e400" in raw
    with pytest.raises(EventError, match="steps"):
        parse_event(raw)


@pytest.mark.parametrize(
    "tools",
    [["t"] * 10_000, [f"t{i}" for i in range(65)], ["x" * 60_000], [None], "billing.refund"],
    ids=["10k", "65", "60KB-name", "null", "not-a-list"],
)
def test_a_hostile_tools_list_on_a_completion_is_a_dead_letter(tools: Any) -> None:
    with pytest.raises(EventError) as caught:
        parse_event(_completion_with(tools=tools))
    assert "tools" in str(caught.value) and len(str(caught.value)) < 2_000


@pytest.mark.parametrize(
    ("tools", "kind"),
    [(["t"] * 10_000, "out_of_range"), ([f"tool.{i}" for i in range(10_000)], "oversized")],
    ids=["10k-under-64KB", "10k-over-64KB"],
)
def test_a_handoff_declaring_10000_tools_is_a_dead_letter(tools: list[str], kind: str) -> None:
    raw = json.loads(handoff("r1", "t1", "a", "b").to_json())
    raw["tools"] = tools
    with pytest.raises(EventError) as caught:
        parse_event(json.dumps(raw).encode())
    assert caught.value.kind == kind and len(str(caught.value)) < 200


def test_max_steps_holds_at_the_largest_count() -> None:
    run = Run(policy_with(max_steps=10, max_handoffs=None))
    allowed = run.handoff("t1", "a", "b")
    report = run.one(completed(allowed.request_id, "t1", "b", steps=1_000_000, t=1))
    assert report.outcome == Outcome.STOP


def test_the_model_refuses_hostile_steps_without_the_wire_too() -> None:
    with pytest.raises(ValidationError):
        completed("r1", "t1", "b", steps=-1)


def _parse_cpu(events: list[bytes]) -> float:
    """CPU seconds per event to parse ``events`` (each three times, the best round); a
    refused event (names past their budget per event) counts like a parsed one."""
    rounds = []
    for _ in range(3):
        start = time.process_time()
        for raw in events:
            with contextlib.suppress(EventError):
                parse_event(raw)
        rounds.append((time.process_time() - start) / len(events))
    return min(rounds)


def test_a_completion_of_64_long_non_ascii_tools_costs_no_more_than_20_ascii_ones() -> None:
    base = json.loads(completed("r1", "t1", "b").to_json())
    han = [chr(c) for c in range(0x4E00, 0x9FFF)]
    hostile = []
    for k in range(4):
        letters = han[k * 4096 :] + han[: k * 4096]
        tools = ["".join(letters[i * 256 : (i + 1) * 256]) for i in range(64)]
        hostile.append(json.dumps(dict(base, tools=tools), ensure_ascii=False).encode())
    ascii_tools = [f"t{i}" + "x" * 250 for i in range(64)]
    plain = [json.dumps(dict(base, tools=ascii_tools)).encode()] * 40
    assert _parse_cpu(hostile) < 20 * _parse_cpu(plain)
