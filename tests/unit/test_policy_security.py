"""What a published policy changes about signing, said and (when it turns signing off)
refused unless confirmed (H2, session 33: a publish without `operators:` switched off the
control plane's signatures in silence). The refusal on a real worker:
tests/integration/test_people_flow.py::test_a_forged_policy_is_refused_and_a_signed_one_is_applied."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from baton.cli.main import cli
from baton.cli.policy_security import security_changes, signing_dropped, signing_lines
from baton.schemas.policy import Policy, parse_policy
from baton.schemas.signing import new_private_key, public_key_text

pytestmark = pytest.mark.unit

KEY = public_key_text(new_private_key())
OTHER = public_key_text(new_private_key())


def _policy(text: str) -> Policy:
    return parse_policy(text, "test.yaml", file=True)


SIGNED = _policy(
    f"""
multi_agent:
  require_approval_for: [billing.refund.create]
  approval:
    approvers: [finance_lead]
    keys: {{finance_lead: '{KEY}'}}
tenants:
  acme:
    approval:
      keys: {{acme_lead: '{KEY}'}}
strict_tenants: true
operators:
  oncall: '{KEY}'
  oncall2: '{OTHER}'
"""
)


def test_dropping_every_operator_or_a_scopes_approval_keys_turns_signing_off() -> None:
    bare = _policy("multi_agent:\n  require_approval_for: [billing.refund.create]\n")
    dropped = signing_dropped(SIGNED, bare)
    assert dropped[0].startswith("operators: oncall, oncall2 -> none")
    assert any(d.startswith("multi_agent approval.keys: finance_lead -> none") for d in dropped)
    assert any(
        d.startswith("tenant acme approval.keys: acme_lead, finance_lead -> none") for d in dropped
    )
    assert signing_dropped(SIGNED, SIGNED) == []
    assert signing_dropped(bare, SIGNED) == []  # adding signing is no drop
    # one operator of two removed still signs: said, not refused
    one = _policy(f"operators:\n  oncall: '{KEY}'\n")
    assert not any(d.startswith("operators") for d in signing_dropped(SIGNED, one))


def test_every_change_of_who_signs_and_what_is_enforced_is_said() -> None:
    after = _policy(
        f"""
multi_agent:
  shadow_mode: true
  approval:
    approvers: ["*"]
    allow_self_approval: true
    keys: {{finance_lead: '{OTHER}', planner: '{KEY}'}}
operators:
  oncall: '{OTHER}'
  newbie: '{KEY}'
"""
    )
    said = security_changes(SIGNED, after)
    for line in (
        "operators removed: oncall2",
        "operators added: newbie",
        "operators key changed: oncall",
        "strict_tenants: on -> off (a tenant not listed is decided, not refused)",
        "multi_agent approval.keys added: planner",
        "multi_agent approval.keys key changed: finance_lead",  # H1, session 34: unsaid
        "multi_agent approval.approvers: finance_lead -> *",
        "multi_agent approval.allow_self_approval: off -> on",
        "multi_agent require_approval_for no longer gates: billing.refund.create",
        "multi_agent shadow_mode: off -> on (decisions recorded, never enforced)",
        "tenant acme approval.keys removed: acme_lead",
    ):
        assert line in said, (line, said)
    assert signing_dropped(SIGNED, after) == []  # every scope keeps a key, operators remain
    assert security_changes(SIGNED, SIGNED) == []


def test_a_hostile_operator_name_is_shown_escaped_and_the_lines_are_bounded() -> None:
    many = "\n".join(f"  op{i}: '{public_key_text(new_private_key())}'" for i in range(60))
    big = _policy(f"operators:\n{many}\n")
    said = security_changes(big, _policy(f"operators:\n  x: '{KEY}'\n"))
    assert "op0, op1, op10" in said[0] and said[0].endswith("and 52 more")
    tenants = "\n".join(f"  t{i}: {{shadow_mode: true}}" for i in range(40))
    said = security_changes(
        SIGNED, _policy(f"operators: {{oncall: '{KEY}'}}\ntenants:\n{tenants}\n")
    )
    assert len(said) == 21 and said[-1].startswith("... and ")


def test_policy_check_lists_the_operators_and_approval_keys(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert signing_lines(SIGNED) == [
        "operators: oncall, oncall2 (kill switches, releases and policy updates count only "
        "signed by one)",
        "approval.keys: finance_lead (grants count only signed by one)",
        "tenant acme approval.keys: acme_lead, finance_lead",
    ]
    path = tmp_path / "p.yaml"
    path.write_text("multi_agent:\n  max_handoffs: 3\n")
    result = CliRunner().invoke(cli, ["policy", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "  operators: none (kill switches, releases and policy updates are taken unsigned" in (
        result.output
    )
    assert "approval.keys" not in result.output  # nothing gated, nothing to sign
