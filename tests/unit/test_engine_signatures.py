"""Identity by signature: only a listed private key turns a pending approval into an allow, lifts
a kill switch or changes the policy; every refused attempt is a recorded decision saying why."""

from __future__ import annotations

from datetime import datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from baton.processors.engine import (
    NO_KILLS,
    apply_control,
    approval_id_for,
    command_refused,
    request_digest,
)
from baton.schemas.decision import Outcome, Phase, Reason
from baton.schemas.events import (
    ApprovalDenied,
    ApprovalGranted,
    HandoffRequested,
    KillSwitch,
    KillSwitchReleased,
    PolicyUpdated,
)
from baton.schemas.policy import Policy, parse_policy
from baton.schemas.signing import (
    SigningKeyError,
    approval_payload,
    control_payload,
    load_private_key,
    new_private_key,
    parse_public_key,
    policy_hash,
    public_key_text,
    sign,
    verify,
    write_private_key,
)
from tests.unit.test_engine_support import Run, at

pytestmark = pytest.mark.unit

REFUND = "billing.refund.create"
FINANCE = new_private_key()
MALLORY = new_private_key()
ONCALL = new_private_key()


def _policy(extra: str = "") -> Policy:
    return parse_policy(
        f"""
multi_agent:
  require_approval_for: [{REFUND}]
  approval:
    keys:
      finance_lead: "{public_key_text(FINANCE)}"
      billing_agent: "{public_key_text(MALLORY)}"
      planner: "{public_key_text(MALLORY)}"
{extra}""",
        "test",
    )


def _asked(run: Run, request_id: str = "req-refund", t: float = 0) -> HandoffRequested:
    d = run.handoff("refund", "planner", "billing_agent", action=REFUND, request_id=request_id, t=t)
    assert d.outcome == Outcome.APPROVAL_REQUIRED
    return run.last


def _answer(
    request: HandoffRequested,
    approver: str = "finance_lead",
    key: Ed25519PrivateKey | None = FINANCE,
    *,
    deny: bool = False,
    t: float = 5,
    approval_id: str | None = None,
    run_id: str | None = None,
    digest: str | None = None,
    signed_run: str | None = None,
) -> ApprovalGranted | ApprovalDenied:
    approval_id = approval_id or approval_id_for(request)
    run_id = run_id or request.run_id
    digest = digest or request_digest(request)
    when = at(t)
    signature = None
    if key is not None:
        payload = approval_payload(
            approval_id, signed_run or run_id, digest, "deny" if deny else "grant", approver, when
        )
        signature = sign(key, payload)
    cls = ApprovalDenied if deny else ApprovalGranted
    return cls(
        approval_id=approval_id,
        run_id=run_id,
        approver=approver,
        signature=signature,
        request_digest=digest,
        event_time=when,
    )


def test_a_grant_signed_by_the_listed_key_turns_the_approval_into_an_allow() -> None:
    run = Run(_policy())
    request = _asked(run)
    d = run.one(_answer(request), 5)
    assert (d.phase, d.outcome, d.reason, d.approver) == (
        Phase.APPROVAL,
        Outcome.ALLOW,
        Reason.APPROVAL_GRANTED,
        "finance_lead",
    )


def test_a_signed_denial_stops_the_handoff() -> None:
    run = Run(_policy())
    d = run.one(_answer(_asked(run), deny=True), 5)
    assert (d.outcome, d.reason) == (Outcome.STOP, Reason.APPROVAL_DENIED)


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        ({"key": None}, Reason.APPROVAL_UNSIGNED),
        ({"approver": "oncall-mallory", "key": MALLORY}, Reason.UNKNOWN_APPROVER),
        ({"key": MALLORY}, Reason.BAD_SIGNATURE),  # finance_lead's name, mallory's key
        ({"digest": "0" * 16}, Reason.SIGNED_FOR_ANOTHER_REQUEST),
        ({"t": -1000}, Reason.SIGNATURE_EXPIRED),  # signed before it was asked for: a replay
        ({"t": 5 + 3600 + 1}, Reason.SIGNATURE_EXPIRED),  # from the future (clock at 5)
        ({"approver": "planner", "key": MALLORY}, Reason.SELF_APPROVAL),
        ({"approver": "billing_agent", "key": MALLORY}, Reason.BENEFICIARY_APPROVAL),
        ({"signed_run": "run-other"}, Reason.BAD_SIGNATURE),  # signed for another run
    ],
)
def test_a_forged_or_replayed_answer_is_refused_and_recorded(forge: dict, reason: Reason) -> None:
    run = Run(_policy())
    request = _asked(run)
    d = run.one(_answer(request, **forge), 5)
    assert (d.phase, d.outcome, d.reason) == (Phase.APPROVAL, Outcome.RECORDED, reason), d
    assert d.detail
    # the approval is still pending: the real approver's grant still counts
    assert run.one(_answer(request), 6).outcome == Outcome.ALLOW


def test_a_grant_too_old_when_it_arrives_is_refused() -> None:
    run = Run(_policy("    max_signature_age_seconds: 60\n"))
    request = _asked(run, t=0)
    # asked at 0, signed at 10, delivered at 200: older than the 60 s the policy allows
    late = run.one(_answer(request, t=10), 200)
    assert (late.outcome, late.reason) == (Outcome.RECORDED, Reason.SIGNATURE_EXPIRED)
    assert "max_signature_age_seconds" in (late.detail or "")


def test_a_grant_for_one_request_cannot_approve_another_with_the_same_request_id() -> None:
    run = Run(_policy())
    first = _asked(run, "req-1")
    grant = _answer(first)
    assert run.one(grant, 5).outcome == Outcome.ALLOW
    # the same request id, another request in another run: another approval id
    other = Run(_policy(), run_id="run-2")
    second = _asked(other, "req-1")
    assert approval_id_for(second) != approval_id_for(first)
    replayed = grant.model_copy(update={"run_id": "run-2"})
    d = other.one(replayed, 6)
    assert (d.outcome, d.reason) == (Outcome.RECORDED, Reason.UNKNOWN_APPROVAL)


def test_without_keys_the_beneficiary_still_may_not_approve_its_own_handoff() -> None:
    run = Run(parse_policy(f"multi_agent: {{require_approval_for: [{REFUND}]}}", "t"))
    request = _asked(run)
    d = run.one(_answer(request, approver="billing_agent", key=None), 5)
    assert (d.outcome, d.reason) == (Outcome.RECORDED, Reason.BENEFICIARY_APPROVAL)
    assert run.one(_answer(request, approver="finance_lead", key=None), 6).outcome == (
        Outcome.ALLOW
    )


# ------------------------------------------------------------------ control


def _ops_policy() -> Policy:
    return parse_policy(f'operators: {{oncall: "{public_key_text(ONCALL)}"}}', "test")


def _kill(
    cls: type = KillSwitch,
    key: Ed25519PrivateKey | None = ONCALL,
    operator: str = "oncall",
    t: float = 0,
) -> KillSwitch | KillSwitchReleased:
    when = at(t)
    signature = None
    if key is not None:
        event_type = cls.model_fields["type"].default
        signature = sign(key, control_payload(event_type, "global", "*", operator, "runaway", when))
    return cls(
        scope="global", operator=operator, reason="runaway", signature=signature, event_time=when
    )


def test_a_signed_kill_applies_and_a_forged_release_does_not_lift_it() -> None:
    policy = _ops_policy()
    kills, record = apply_control(NO_KILLS, _kill(), policy, at(1))
    assert kills.everything and record.reason == Reason.KILL_SWITCH
    for forged, reason in [
        (_kill(KillSwitchReleased, key=None, t=2), Reason.CONTROL_UNSIGNED),
        (_kill(KillSwitchReleased, key=MALLORY, t=2), Reason.BAD_SIGNATURE),
        (_kill(KillSwitchReleased, key=MALLORY, operator="mallory", t=2), Reason.UNKNOWN_OPERATOR),
    ]:
        after, refused = apply_control(kills, forged, policy, at(3))
        assert after.everything, forged
        assert (refused.outcome, refused.reason) == (Outcome.RECORDED, reason)
        assert refused.decision_id != record.decision_id
    released, ok = apply_control(kills, _kill(KillSwitchReleased, t=2), policy, at(3))
    assert not released.everything and ok.reason == Reason.KILL_SWITCH_RELEASED


def test_a_replayed_signed_release_cannot_lift_a_later_kill() -> None:
    policy = _ops_policy()
    kills, _ = apply_control(NO_KILLS, _kill(t=0), policy, at(0))
    old_release = _kill(KillSwitchReleased, t=1)
    kills, _ = apply_control(kills, old_release, policy, at(1))
    kills, _ = apply_control(kills, _kill(t=2), policy, at(2))
    after, record = apply_control(kills, old_release, policy, at(3))
    assert after.everything and record.reason == Reason.CONTROL_REPLAYED


def test_a_kill_switch_holds_in_shadow_mode() -> None:
    run = Run(parse_policy("multi_agent: {shadow_mode: true}", "t"))
    kills, _ = apply_control(NO_KILLS, _kill(), _ops_policy(), at(0))
    run.kills = kills
    d = run.handoff("t1", "planner", "writer")
    assert (d.outcome, d.reason) == (Outcome.STOP, Reason.KILLED)


def _update(yaml: str, key: Ed25519PrivateKey | None = ONCALL, t: float = 0) -> PolicyUpdated:
    when: datetime = at(t)
    sha = policy_hash(yaml)
    signature = None
    if key is not None:
        signature = sign(
            key, control_payload("policy_updated", "global", "*", "oncall", "", when, sha)
        )
    return PolicyUpdated(
        policy_yaml=yaml, operator="oncall", policy_sha=sha, signature=signature, event_time=when
    )


def test_an_unsigned_or_forged_policy_update_is_refused() -> None:
    policy = _ops_policy()
    shadow = "multi_agent: {shadow_mode: true}"
    assert command_refused(_update(shadow), policy) is None
    assert command_refused(_update(shadow, key=None), policy)[0] == Reason.CONTROL_UNSIGNED
    assert command_refused(_update(shadow, key=MALLORY), policy)[0] == Reason.BAD_SIGNATURE
    tampered = _update(shadow).model_copy(update={"policy_yaml": "multi_agent: {}"})
    assert command_refused(tampered, policy)[0] == Reason.BAD_SIGNATURE
    # without operators in the policy, names are trusted (the ACL is the only wall)
    assert command_refused(_update(shadow, key=None), parse_policy("", "t")) is None


# ------------------------------------------------------------------ tenants


def test_strict_tenants_refuse_a_tenant_that_is_not_configured_exactly() -> None:
    # "ACME" is acme (names fold); "acme " cannot be sent at all (a bad_name dead letter)
    policy = parse_policy("strict_tenants: true\ntenants: {acme: {max_handoffs: 2}}", "t")
    for name in ("acme", "ACME"):
        ok = Run(policy, tenant=name).handoff("t1", "planner", "writer")
        assert ok.outcome == Outcome.ALLOW
    for name in ("acme2", "acm", "default"):
        run = Run(policy, tenant=name)
        d = run.handoff("t1", "planner", "writer")
        assert (d.outcome, d.reason) == (Outcome.STOP, Reason.UNKNOWN_TENANT), name
        assert run.state is None  # nothing kept for a tenant nobody configured


# ------------------------------------------------------------------ keys


def test_a_key_file_is_written_0600_and_read_back(tmp_path) -> None:  # type: ignore[no-untyped-def]
    key = new_private_key()
    path = tmp_path / "finance_lead.key"
    write_private_key(key, path)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = load_private_key(path)
    payload = b"x"
    assert verify(parse_public_key(public_key_text(key)), payload, sign(loaded, payload))
    path.chmod(0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_private_key(path)


def test_a_signature_never_verifies_for_another_payload_or_garbage() -> None:
    public = parse_public_key(public_key_text(FINANCE))
    good = sign(FINANCE, b"payload")
    assert verify(public, b"payload", good)
    assert not verify(public, b"payload2", good)
    for junk in ("", "not base64!", "AAAA", "A" * 88, good[:-4] + "AAA="):
        assert not verify(public, b"payload", junk)
